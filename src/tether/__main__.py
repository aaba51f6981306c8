"""``python -m tether`` is the ``tether`` command."""

from tether._entry import main

main()
