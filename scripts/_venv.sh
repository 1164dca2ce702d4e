# Shared by scripts/test, scripts/demo and scripts/bench: make .venv if missing and
# install the project with the given extras. Re-installs only when pyproject.toml or
# the extras change, so repeated runs start at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.peernet-installed"
# Re-install when pyproject.toml or the accelerator's C source changes: pip builds the
# extension in place, and a stale build would be tested instead of the source.
shopt -s nullglob
inputs=("$root/pyproject.toml" "$root"/peernet/_proto/*.c)
shopt -u nullglob
want="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1) [$extras]"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  spec="$root"
  [ -n "$extras" ] && spec="$root[$extras]"
  echo "installing peernet-py${extras:+[$extras]} into .venv (once; later runs start at once)..." >&2
  # pip's and setuptools' chatter (the editable-install banner) goes to a log, shown
  # only if the install fails.
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --quiet --upgrade pip &&
         "$venv/bin/python" -m pip install --quiet -e "$spec"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "installing into $venv failed (log: $log)" >&2
    exit 1
  fi
  echo "$want" >> "$stamp"
fi
