# Sourced by check_regression.sh, which commits experiments: a scratch clone of a
# checkout, so that nothing it commits or measures touches that checkout.
#
#   scratch_clone SRC DEST   clone SRC's HEAD into DEST, lay SRC's working tree over it
#                            (tracked and untracked files that git does not ignore) and
#                            commit that as "baseline": uncommitted work is what gets measured
#   scratch_git ARGS...      git in $scratch_repo, with a committer identity
scratch_git() { git -C "$scratch_repo" -c user.name=disagmoe-scripts -c user.email=scripts@disagmoe.invalid "$@"; }

scratch_clone() {
  local src=$1
  scratch_repo=$2
  git clone -q "$src" "$scratch_repo" || return 1
  scratch_git ls-files -z | (cd "$scratch_repo" && xargs -0 rm -f)
  (cd "$src" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -xf - -C "$scratch_repo"
  scratch_git add -A && scratch_git commit -q --allow-empty -m "baseline: working tree of $src"
}
