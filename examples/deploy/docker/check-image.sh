#!/usr/bin/env bash
# Build the example image from a wheel of this checkout and check that the worker starts
# in it. Needs a Docker daemon (the project's CI machine has none, so CI does not run it).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
context="$(mktemp -d)"
tag="celeriac-proj-check-$$"
trap 'docker rmi -f "$tag" >/dev/null 2>&1 || true; rm -rf "$context"' EXIT
cp -r "$root/examples/deploy/." "$context/"
python -m pip wheel --no-deps -q -w "$context" "$root"
wheel="$(basename "$(ls "$context"/celeriac-*.whl)")"
docker build -f "$context/docker/Dockerfile" \
  --build-arg "CELERIAC_REQUIREMENT=/context/$wheel[redis]" -t "$tag" "$context"
docker run --rm "$tag" celeriac -A proj worker --help | grep -q -- "--time-limit"
echo "image $tag builds and its worker starts"
