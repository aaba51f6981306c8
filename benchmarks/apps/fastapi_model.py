"""A realistic FastAPI app: a GET returning a 20-field pydantic model, a 2 KB JSON POST."""

from fastapi import FastAPI
from pydantic import BaseModel


class Item(BaseModel):
    id: int
    name: str
    description: str
    price: float
    tax: float
    quantity: int
    sku: str
    category: str
    brand: str
    color: str
    size: str
    weight: float
    width: float
    height: float
    depth: float
    in_stock: bool
    rating: float
    reviews: int
    tags: list[str]
    supplier: str


ITEM = Item(
    id=1, name="widget", description="a widget for every occasion", price=9.99, tax=0.2,
    quantity=3, sku="W-0001", category="tools", brand="tether", color="blue", size="M",
    weight=0.5, width=1.0, height=2.0, depth=3.0, in_stock=True, rating=4.5, reviews=120,
    tags=["a", "b", "c"], supplier="acme",
)  # fmt: skip

app = FastAPI()


@app.get("/item")
async def get_item() -> Item:
    return ITEM


@app.post("/echo")
async def echo(payload: dict[str, object]) -> dict[str, int]:
    return {"keys": len(payload)}
