# Sourced by the GPU-machine scripts, in the repository root. The lent machine's copy of
# the git directory has arrived without history, or older than the working tree; asv
# needs the commits. A bundle made beforehand (git bundle create .scratch/repo.bundle
# --all) replaces it when their HEADs differ and the bundle holds this HEAD's commit (so
# no commit is lost: a checkout whose HEAD is newer than the bundle keeps its own).
if [ -f .scratch/repo.bundle ]; then
  bundle_head=$(git bundle list-heads .scratch/repo.bundle HEAD 2>/dev/null | cut -d' ' -f1)
  head=$(git rev-parse -q --verify HEAD 2>/dev/null)
  if [ -n "$bundle_head" ] && [ "$head" != "$bundle_head" ]; then
    rm -rf .scratch/git-from-bundle
    git clone -q --bare .scratch/repo.bundle .scratch/git-from-bundle
    if [ -z "$head" ] || git --git-dir=.scratch/git-from-bundle cat-file -e "$head^{commit}" 2>/dev/null; then
      rm -rf .git && mv .scratch/git-from-bundle .git && git config --bool core.bare false && git reset -q
      echo "git directory rebuilt from .scratch/repo.bundle (HEAD ${bundle_head:0:8})" >&2
    else
      rm -rf .scratch/git-from-bundle
      echo "HEAD ${head:0:8} is not in .scratch/repo.bundle: keeping this git directory" >&2
    fi
  fi
fi
