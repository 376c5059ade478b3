#!/bin/sh
# Replace the vendored NiiVue by another release from the npm registry:
#   sh viewer/refresh_niivue.sh 0.69.0
# then put the version and the sha256 it prints into viewer/README.md (a test compares them) and
# run the browser tests. Never run at install or test time: the project serves the file it holds.
set -eu
version="${1:?usage: sh viewer/refresh_niivue.sh VERSION}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@niivue/niivue@$version" >/dev/null && tar xzf niivue-niivue-"$version".tgz)
license="$(cd "$work/package" && node -p 'require("./package.json").license')"
[ "$license" = "BSD-2-Clause" ] || { echo "refresh_niivue: licence is now $license: review it before vendoring" >&2; exit 1; }
cp "$work/package/dist/niivue.umd.js" "$here/static/niivue/niivue.umd.js"
echo "NiiVue $version: $(wc -c < "$here/static/niivue/niivue.umd.js") bytes, sha256 $(sha256sum "$here/static/niivue/niivue.umd.js" | cut -d' ' -f1)"
