"""The live service: `motionstreamer serve`.

app.py        create_app(...): the FastAPI app (HTTP routes, the WebSocket stream, the browser page)
protocol.py   the /v1 messages, limits and close codes
scheduler.py  one StreamingEngine stepped by one background thread, streams paced in real time
ray_app.py    the same app as a Ray Serve deployment (scale-out, autoscaling on ongoing streams)
commands.py   the `serve` CLI verb
static/       the browser app (three.js vendored from npm, with its licence)
"""
