"""A minimal b2s plug-in reader (``toy_fleet.reader.ToyFleetReader``) and the toy dataset it reads
(``python -m toy_fleet.make_toy ROOT``). See README.md next to this package."""
