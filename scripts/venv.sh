# Sourced by the README's scripts (install.sh, demo.sh, serve.sh, test.sh): use the active virtual
# environment, or else the checkout's own, .venv (made here the first time; $MOTIONSTREAMER_VENV names
# another folder). The lock pins ~180 packages at exact versions: installed into a Python that other
# programs share, it would change their dependencies under them, and `pip check` would rightly fail on
# their requirements (as it did on a CI machine whose system Python carries botocore).
if [ -z "${VIRTUAL_ENV:-}" ]; then
  _ms_venv="${MOTIONSTREAMER_VENV:-.venv}"
  if [ ! -x "$_ms_venv/bin/python" ]; then
    echo "scripts/venv.sh: creating the virtual environment $_ms_venv" >&2
    "${MOTIONSTREAMER_PYTHON:-python3}" -m venv "$_ms_venv"
  fi
  # shellcheck disable=SC1091
  . "$_ms_venv/bin/activate"
  unset _ms_venv
fi
