"""The live service: `motionstreamer serve`.

app.py        create_app(...): the FastAPI app; every route on one module-level APIRouter behind one access check
service.py    ServeConfig, Service (models, engine, access policy) and Connection (one WebSocket = one stream)
protocol.py   the /v1 messages (one pydantic model each), limits and close codes
scheduler.py  one StreamingEngine stepped by one background thread, streams paced in real time
ray_app.py    the same app as a Ray Serve deployment (scale-out, autoscaling on ongoing streams)
commands.py   the `serve` CLI verb
static/       the browser app (three.js vendored from npm, with its licence)
"""
