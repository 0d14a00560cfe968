"""The terminal user interface of the uploader: attaches to a running engine's control socket.

Layout: :mod:`.app` (the application), :mod:`.feed` (the one thread that reads the socket),
:mod:`.messages` (what that thread tells the application), :mod:`.model` (snapshot and event
data turned into table rows), :mod:`.components` (widgets and screens), and ``uploader.tcss``.
"""
