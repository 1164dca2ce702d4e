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
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) [$extras]"
if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  spec="$root"
  [ -n "$extras" ] && spec="$root[$extras]"
  "$venv/bin/python" -m pip install --quiet -e "$spec"
  echo "$want" >> "$stamp"
fi
