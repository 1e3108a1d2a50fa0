"""dlbook: the shared code behind every chapter of the book.

One concept, one module: ``dlbook.device`` (device, seeds, autocast),
``dlbook.data`` (offline datasets and tokenizers), ``dlbook.plot`` (shared
figures), and a module per chapter concept.  Import the module you need::

    from dlbook.device import get_device, seed_everything
"""

__version__ = "0.1.0"
