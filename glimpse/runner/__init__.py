"""The headless runner behind ``glimpse-enhance run`` and ``glimpse-enhance loop``.

It talks to ComfyUI over HTTP and the /ws websocket only (stdlib urllib + websocket-client, never a ComfyUI import),
so the same command drives a local embedded server, a remote one, or several at once. Modules:

* ``workflow``: finding an API workflow, refusing canvas files, the one override table (class_type + input name).
* ``viewset``: the files of a view set, its content hash, its views, chunks and selection strings.
* ``manifest``: OUT_DIR/manifest.json, the params hash that makes reruns skip finished views, atomic writes.
* ``client``: the HTTP/websocket client and its error kinds.
* ``embedded``: starting and stopping a ComfyUI from COMFYUI_PATH when no ``--server`` is given.
* ``progress``: the stderr progress line (views done/total, s/view, ETA).
* ``run``: one run over one set or a folder of sets, chunked, resumable, spread over servers.
* ``loop``: rounds of enhance -> refit -> render with the user's commands.
"""
