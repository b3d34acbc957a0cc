#!/usr/bin/env bash
# Mutation testing of the simulation: builds bulwark with the planted bugs
# (`--features plant`), runs `bulwark sim --plant NAME` for each, stopping
# at its first failure, and prints a markdown table of what was caught.
#
#   SEEDS  seeds per bug (default 200)
#   JOBS   worker processes (default 2)
#   LOGS   where each run's stdout and stderr go (default target/planted-bugs)
#
# A report: it exits 0 whatever was caught.
set -u
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-200}
JOBS=${JOBS:-2}
LOGS=${LOGS:-target/planted-bugs}
BIN=target/release/bulwark

if ! cargo build --release --features plant >&2; then
  echo "planted-bugs: the build failed; no report" >&2
  exit 0
fi
mkdir -p "$LOGS"

if ! list=$("$BIN" sim --plant list); then
  echo "planted-bugs: \`bulwark sim --plant list\` failed; no report" >&2
  exit 0
fi

rows=()
while IFS=$'\t' read -r name what; do
  [ -n "$name" ] || continue
  echo "planted-bugs: $name ($SEEDS seeds, $JOBS jobs)" >&2
  started=$SECONDS
  "$BIN" sim --plant "$name" --seeds "$SEEDS" --jobs "$JOBS" --stop-at-first-failure \
    >"$LOGS/$name.stdout" 2>"$LOGS/$name.stderr"
  rc=$?
  # A failure prints `SEED=<s>: step <n>: <INVARIANT>: ...` (or `end:` for
  # the liveness phase), or `SEED=<s>: the worker died ...`.
  first=$(grep -m1 '^SEED=' "$LOGS/$name.stdout")
  if [ -n "$first" ]; then
    caught=yes
    seed=$(sed -nE 's/^SEED=([0-9]+):.*/\1/p' <<<"$first")
    invariant=$(sed -nE 's/^SEED=[0-9]+: (step [0-9]+|end): ([A-Z0-9_]+):.*/\2/p' <<<"$first")
    if [ -z "$invariant" ]; then
      case $first in
        *"the worker died"*)
          # Its stderr's tail follows: name the first panic.
          panic=$(grep -m1 -A1 'panicked at' "$LOGS/$name.stdout" | tail -n1)
          invariant="(worker died${panic:+: $panic})" ;;
        *) invariant="(unparsed: see $LOGS/$name.stdout)" ;;
      esac
    fi
  elif [ "$rc" -eq 0 ]; then
    caught=no; seed=-; invariant=-
  else
    caught="error (exit $rc, see $LOGS/$name.stderr)"; seed=-; invariant=-
  fi
  echo "planted-bugs: $name: caught $caught, seed $seed, $invariant ($((SECONDS - started)) s)" >&2
  rows+=("| \`$name\` | ${what//|/\\|} | $caught | $seed | ${invariant//|/\\|} |")
done <<<"$list"

echo "| bug | what | caught | first seed | invariant |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit 0
