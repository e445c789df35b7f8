#!/usr/bin/env bash
# `make breaking`: buf breaking of protos/ against the last commit on main, offline (no registry, no remote).
#
# Which commit the contracts are compared against (docs/decisions.md, "buf breaking against main"):
#   * HEAD is not main, or protos/ has uncommitted changes: the merge-base of HEAD and main, i.e. what
#     this change lands on (on main with uncommitted changes that is HEAD itself);
#   * HEAD is main and protos/ is as committed (CI's clean clone of main): HEAD~1, so the commit that
#     broke a v1 contract turns CI red;
#   * no such commit (a repository with one commit, a shallow clone, no protos/ there yet): nothing to
#     compare against; it says so and passes.
# The base's protos/ come from `git archive`. A base from before the google/type copies were committed
# borrows today's copies (they are unchanged copies of googleapis-common-protos).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
buf=${BUF:-$root/.venv/bin/buf}
main=${SYNCGOV_MAIN_REF:-main}

if ! git rev-parse -q --verify "$main^{commit}" >/dev/null; then
    main=HEAD # no main branch in this checkout (a detached CI clone): HEAD is main
fi

if [[ -n "$(git status --porcelain -- protos)" || "$(git rev-parse HEAD)" != "$(git rev-parse "$main^{commit}")" ]]; then
    base=$(git merge-base HEAD "$main")
    why="merge-base of HEAD and $main"
elif base=$(git rev-parse -q --verify "HEAD~1^{commit}"); then
    why="HEAD~1: HEAD is $main"
else
    echo "buf breaking: skipped, $main has no parent commit to compare against"
    exit 0
fi

against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$base" -- protos | tar -x -C "$against"
if [[ ! -f "$against/protos/buf.yaml" ]]; then
    echo "buf breaking: skipped, $(git rev-parse --short "$base") has no protos/buf.yaml"
    exit 0
fi
if [[ ! -d "$against/protos/third_party/google/type" ]]; then
    mkdir -p "$against/protos/third_party"
    cp -R protos/third_party/google "$against/protos/third_party/"
fi

echo "buf breaking: protos/ against $(git rev-parse --short "$base") ($why)"
cd protos
"$buf" breaking --against "$against/protos"
