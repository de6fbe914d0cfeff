#!/usr/bin/env bash
# bench/quality.py's build, bench/standin_levels.py (each kind's stop level against withheld documents of the kind, from
# the train and validation retain sets cut to fewer documents: first, as it needs only the target and takes seconds;
# last, it was lost with three other stages to the forty-first call's device time), bench/quality.py's tune and report,
# bench/attack.py, bench/anchor_hold.py (whether the chosen run's and each ablation's anchor holds the texts it holds,
# and withheld ones), bench/particulars_cpu.py (where each one's rise on the withheld documents lands: their particulars
# or the template, and which class of the forget documents it raised, beside the retrain oracle's) and
# bench/stragglers.py (which forget documents each run's written weights leave below their kind's stop level, beside the
# oracle's NLL of each), bench/relearn_attackers.py (which part of the model relearning goes through), with
# bench/goal_reach.py after the report (how far each kind's goal takes its documents past
# the chosen run's levels at several shares of directions kept; then on train, the preset's levels) as one pipeline in
# the background, so that remote commands shorter than the whole (a lent GPU's 10-minute limit) carry it without a stage
# cut short: each call starts the pipeline once (a snapshot of the code and of $REPEDIT_DATA, so a later call's copy of
# the tree changes nothing it reads), waits up to WAIT seconds, prints the progress and the logs' ends, and copies the
# results to OUT, with the target, the oracle and the files the build wrote once the build is done (target.tgz.aa, .ab,
# ... and the oracle's weights apart, oracle.tgz.aa, ...: parts of PART_SIZE, for the device returns files of 16 MiB at
# most, and the target's alone fit a later call's 64 MiB tree beside the repository, where both did not on the
# forty-seventh call, 25 MiB and about 26; `cat target.tgz.* | tar xzf - -C /tmp/w2` gives back a work directory where
# every stage that reads only the target runs on CPU, and a folder of them carried to a later session, BUILT=folder,
# takes the build's place: its 500 s of device time go to more seeds). Call it again until it says "all stages done",
# right after the last: a lent GPU idle 30 s is given back, and the next call's fresh machine starts the pipeline from
# the build without what an earlier call installed (the thirty-sixth call's second call, seven minutes late, lost the
# build to a missing wheel and the session's device time with it), so install the wheels in every call, and carry the
# last call's files as RESUME (the forty-fourth call's second and third calls, each on a fresh machine, ran the tune
# again without it). Set the third call's wait under the budget left less 100 s, for the device's limit is the budget
# left less the start when that is less than asked, and keep the report's runs few (every call's stage times are in
# BENCHMARKS.md: the forty-first's build 498 s, tune 378 s with six runs, report 691 s with nine; the forty-second's
# 530, 368 and 278 s with seven; the forty-third's, carried, tune 651 s with eight, report 486 s with fifteen).
# bench/reproducibility.py (a seed repeats exactly under --deterministic, at no cost) runs on its own, and the grid's
# runs are deterministic.
#
#   REPEDIT_DATA=/path/to/data bash bench/quality_calls.sh 560 "$OUT"
#   REPEDIT_DATA=/path/to/data BUILT=built RESUME=last bash bench/quality_calls.sh 560 "$OUT"   # last: the last OUT
#
# Environment: WORK (the work directory, default /tmp/w2), STATE (progress, logs, results; /tmp/quality-calls), BUILT (a
# folder of an earlier call's target.tgz.* parts (or target.txz.*, the same made again with xz), and its oracle's if
# carried too, unpacked as the build, and its train oracle's NLLs, oracle_nll_train.json, so TRAIN_ORACLE makes none; a
# build carried without the oracle's weights runs the relearning attack without its oracle control, the particulars'
# split without the oracle's and the stragglers not at all), PY (python3),
# METHODS (rmu-standins; the baselines alone, graddiff,npo,sugd, go without the stop levels and the anchor hold),
# SEEDS (tune 2), CANDIDATES (the tune's candidates, comma-separated grid names, one method's as rmu-ascent.c2, with
# the incumbent always among them: every one), TRAIN_ATTACK (the tune's run names, e.g. c20,c22,c20.s1: after the
# tune, each on train attacked by relearning, bench/attack.py --attacks relearn, into STATE/attack-train; a run the
# tune did not make on this machine, its row from PREVIOUS, is made again first: quality.py train-weights),
# TRAIN_KNOWN (8: the forget documents the relearning attacker knows, validation's count on the sim; a tenth of
# train's, 34, gave back more on the seventieth call, c20 0.74 against validation's 0.57), REPORT (0: stop after the
# tune and the relearning on train, every later stage left out; a later call without it goes on to the report, on the
# same machine or carried as RESUME), TRAIN_ORACLE (1: before the tune, the oracle of the train forget set,
# `quality.py train-oracle`, so the tune's proxy reads the oracle KS, trained beside the target where this call builds
# it; not again where BUILT or a RESUME carried its NLLs: 445 s on an H100 beside a report, the eighty-second call),
# REPORT_ONLY (the report's runs alone, by name, '|'-separated:
# 'rmu-standins|rmu-ascent|rmu-standins - no retain NLL'; the others' rows stay and no later stage reads them; with
# RESUME, the report and the stages after it run again even where the earlier call finished them),
# REPORT_SEEDS (4: on the forty-third call four configurations' means on three seeds each lay within 0.02, their
# ranges 0.04-0.14 wide),
# RUN_SECONDS (600: the tune's runs share one H200's ~29 steps a second, and a run on train calibrates after 1,100-1,700
# steps; at 330 s six of the twenty-ninth call's eight stopped unfinished, at 420-480 s none of the thirtieth's to the
# forty-second's six, which took 323-347 s each; eight runs at once, the particulars alone among them, take longer:
# 3,480-3,510 steps in 600 s on the forty-third, unfinished), TUNE_WORKERS (as REPORT_WORKERS: a repaired tune run
# peaks at 27 GiB, three of them fit an H100, the ninety-sixth session), REPORT_WORKERS (one per 26,000 MiB of
# the card, 5 on an H200, 3 on an H100, 5 where nvidia-smi reads none: ten runs of ~13.5 GiB and the evaluation ran one
# H200 out of memory in the twenty-third call, eight of ~18.5 GiB beside the pipeline's 15 the sixty-eighth's, five on
# an H100 fifteen of the seventy-sixth's nineteen, each failed run run again at half as many a device; and one GPU
# steps ~29 times a second in all however many share it), REPORT_SECONDS (300: each report run's budget; its
# calibrated runs end in 29-118 s, the particulars alone ran out of 180 s after 1,023 steps in the forty-first call, and
# one that never calibrates ran 330 s and cut the attacks off in the twenty-eighth), COPY_EVERY (20: seconds between
# copies of the results so far to OUT), POLL (2: seconds between looks at whether the stages are done; the tests' stand-in
# stages end at once), PART_SIZE (15M), RESUME (a folder holding an earlier call's quality-calls.tgz
# and work.tgz, with BUILT its build: a call that finds a fresh machine, the last one given back idle, goes on from the
# stages those finished instead of from the tune, and makes again, exactly, the report runs whose weights the later
# stages read; the forty-fourth call's second and third calls each found a fresh machine and ran the tune again, and its
# report never finished; a tune cut short goes on from the runs it finished, added to PREVIOUS, and a report cut
# short from the runs it made and scored on the same kind of card), RETRY (set: a warm
# machine's pipeline that stopped at a failed stage starts again from that stage on this call's code, its finished
# stages and work directory kept; the forty-fifth call's anchor hold failed on a bug fixed between calls), PREVIOUS (an
# earlier tune's results.csv on the build carried as BUILT, its rows named as this grid's candidates: those runs are not
# made again, `quality.py tune --previous`; the grid's runs are deterministic, and the forty-fourth call's tune repeated
# to the last digit on a second machine; several, space-separated, for a tune carried over calls each cut short: the
# sweep's results.csv, in work.tgz, holds the runs finished by then, and the forty-eighth call's baselines' tune outran
# the session).
set -u
WAIT=${1:-560}; OUT=${2:-}
[ -z "$OUT" ] || mkdir -p "$OUT" || exit 1  # a folder under $OUT: the fifty-seventh call's first call sent nothing back
WORK=${WORK:-/tmp/w2}; STATE=${STATE:-/tmp/quality-calls}; PY=${PY:-python3}; BUILT=${BUILT:-}
METHODS=${METHODS:-rmu-standins}; SEEDS=${SEEDS:-2}; REPORT_SEEDS=${REPORT_SEEDS:-4}; RUN_SECONDS=${RUN_SECONDS:-600}
card_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
[[ $card_mib =~ ^[0-9]+$ ]] || card_mib=143771  # an H200's, where none is read
REPORT_WORKERS=${REPORT_WORKERS:-$(( card_mib >= 52000 ? card_mib / 26000 : 1 ))}
TUNE_WORKERS=${TUNE_WORKERS:-$REPORT_WORKERS}
REPORT_SECONDS=${REPORT_SECONDS:-300}
COPY_EVERY=${COPY_EVERY:-20}; POLL=${POLL:-2}; PART_SIZE=${PART_SIZE:-15M}; RESUME=${RESUME:-}; RETRY=${RETRY:-}
PREVIOUS=${PREVIOUS:-}; CANDIDATES=${CANDIDATES:-}; TRAIN_ATTACK=${TRAIN_ATTACK:-}; REPORT=${REPORT:-1}
TRAIN_KNOWN=${TRAIN_KNOWN:-8}; REPORT_ONLY=${REPORT_ONLY:-}; TRAIN_ORACLE=${TRAIN_ORACLE:-}

stage() {  # [--goes-on] NAME COMMAND...: run once; STATE/NAME.done marks it finished, STATE/failed stops the pipeline
  # (--goes-on: a diagnostic, whose failure is logged and stops nothing)
  local goes_on=0; [ "$1" = --goes-on ] && { goes_on=1; shift; }
  local name=$1; shift
  [ -f "$STATE/$name.done" ] && return 0
  echo "=== $name start $(date +%T)" >> "$STATE/progress"
  "$@" > "$STATE/$name.log" 2>&1
  local code=$?
  echo "=== $name exit $code $(date +%T)" >> "$STATE/progress"
  if [ $code -ne 0 ] && [ $goes_on = 0 ]; then touch "$STATE/failed"; exit $code; fi
  touch "$STATE/$name.done"
}

pipeline() {
  cd "$STATE/code" || exit 1
  if [ -n "$BUILT" ]; then  # an earlier call's build, carried: its target, sets, data files and the oracle's row
    # (as sent, gzip, or made again with xz, a sixth smaller: `cat target.tgz.* | gunzip | xz | split -b 15M -
    # target.txz.`; beside the sixty-seventh session's tree the twenty-fourth build's 26 MB left the carry 0.4 MB)
    stage build bash -c 'mkdir -p "$1" && for name in target oracle; do
        if [ -f "$2/$name.txz.aa" ]; then cat "$2/$name".txz.* | xz -dc | tar xf - -C "$1" || exit 1
        elif [ -f "$2/$name.tgz.aa" ]; then cat "$2/$name".tgz.* | tar xzf - -C "$1" || exit 1
        elif [ $name = target ]; then exit 1; fi; done
      # the oracle NLLs of the train forget set made on this build (TRAIN_ORACLE), carried beside it: not made again
      [ ! -f "$2/oracle_nll_train.json" ] || cp "$2/oracle_nll_train.json" "$1/"' unpack "$WORK" "$BUILT"
  else
    local beside=()  # TRAIN_ORACLE=1: the train oracle trained beside the target and the oracle, in the build's time
    [ "$TRAIN_ORACLE" = 1 ] && beside=(--train-oracle)
    stage build $PY bench/quality.py build --work "$WORK" --mmlu-limit 2000 --withhold 40 12 "${beside[@]}"
  fi
  # an earlier call's tune, rows and report runs' records, over the build they were made on
  [ -z "$RESUME" ] || [ ! -f "$RESUME/work.tgz" ] || tar xzf "$RESUME/work.tgz" -C "$WORK" || exit 1
  # (a report cut short goes on from the runs it finished on this kind of card: `quality.py report` keeps their rows
  # and records, and removes every other record, so no later stage reads a run it did not make)
  # and the runs of a tune it left unfinished (the sweep's results.csv, which this call's sweep writes over), kept
  # in STATE, sent back with it, so none is run again on this machine or a later one (the sixtieth call's second
  # call found a fresh machine and ran the first's four finished runs again)
  if [ -n "$RESUME" ] && [ ! -f "$STATE/tune.done" ] && [ -f "$WORK/tune/results.csv" ]; then
    cp "$WORK/tune/results.csv" "$STATE/tune-resumed-$(date +%s%N).csv" || exit 1
  fi
  # the stop levels and the anchor's hold are RMU's: a call of the baselines alone goes without them, and a call for the
  # tune alone (REPORT=0) without the levels, a diagnostic of the report's (49 s of the ninety-fourth session's few)
  [[ $METHODS == rmu* ]] && [ "$REPORT" != 0 ] && stage --goes-on standin-levels $PY bench/standin_levels.py \
    --target "$WORK/sim" --unseen "$WORK/reference-public-tasks.jsonl" --grid "bench/grids/${METHODS%%,*}.json" \
    --retain train="$WORK/sets/train/retain.jsonl" validation="$WORK/sets/validation/retain.jsonl" \
    --withheld train="$WORK/sim/withheld/train/nonmember.jsonl" \
    validation="$WORK/sim/withheld/validation/nonmember.jsonl" --sizes 6,13,26 --device cuda \
    --out "$STATE/standin_levels.json"
  local previous=()  # an earlier tune's rows of this grid's candidates, not run again; the resumed ones last
  [ -z "$PREVIOUS" ] || read -ra previous <<< "$PREVIOUS"
  local resumed
  for resumed in "$STATE"/tune-resumed-*.csv; do [ -f "$resumed" ] && previous+=("$resumed"); done
  [ ${#previous[@]} -eq 0 ] || previous=(--previous "${previous[@]}")
  local candidates=()  # the grid's candidates tried: every one, unless named
  [ -z "$CANDIDATES" ] || candidates=(--candidates "$CANDIDATES")
  # TRAIN_ORACLE=1: the train forget set's oracle first (its NLLs carried in work.tgz), so the tune reads the KS bar
  if [ "$TRAIN_ORACLE" = 1 ] && [ ! -f "$WORK/oracle_nll_train.json" ]; then
    stage train-oracle $PY bench/quality.py train-oracle --work "$WORK"
  fi
  stage tune $PY bench/quality.py tune --work "$WORK" --workers "$TUNE_WORKERS" --seeds "$SEEDS" \
    --methods "$METHODS" --run-seconds "$RUN_SECONDS" "${previous[@]}" "${candidates[@]}"
  # the relearning attack on train of the candidates named (TRAIN_ATTACK=c20,c22): the proxy the tune chose by does not
  # read it, and a latent adversary gave back a third of the preset's share on validation at the same final
  if [ -n "$TRAIN_ATTACK" ]; then
    stage --goes-on train-weights $PY bench/quality.py train-weights --work "$WORK" --methods "${METHODS%%,*}" \
      --candidates "$TRAIN_ATTACK" --workers "$TUNE_WORKERS" --run-seconds "$RUN_SECONDS"
    local trained=()
    [ -f "$WORK/train-runs.txt" ] && mapfile -t trained < "$WORK/train-runs.txt"
    [ ${#trained[@]} -eq 0 ] || stage --goes-on attack-train $PY bench/attack.py --runs "${trained[@]}" \
      --reference "$WORK/sim" --forget "$WORK/sets/train" --unseen "$WORK/sim/withheld/train/nonmember.jsonl" \
      --attacks relearn --relearn-known "$TRAIN_KNOWN" --out "$STATE/attack-train" --jobs "${#trained[@]}"
  fi
  # REPORT=0: a call for the tune and its relearning on train alone (the report of a choice unchanged repeats an
  # earlier call's to the digit, in 950 s of device time)
  [ "$REPORT" = 0 ] && { touch "$STATE/all.done"; return 0; }
  local only=()  # REPORT_ONLY: the report's runs this call makes or keeps, '|'-separated (names hold commas)
  [ -z "$REPORT_ONLY" ] || { IFS='|' read -ra only <<< "$REPORT_ONLY"; only=(--only "${only[@]}"); }
  stage report $PY bench/quality.py report --work "$WORK" --methods "$METHODS" --ablations "$METHODS" \
    --workers "$REPORT_WORKERS" --mmlu-limit 2000 --seeds "$REPORT_SEEDS" --run-seconds "$REPORT_SECONDS" \
    --out "$STATE/quality.json" "${only[@]}"
  local runs=() weightless=()  # seed 0 of each chosen configuration and ablation that forgets (not "no misdirection")
  for dir in "$WORK"/report/runs/*; do
    [ -d "$dir" ] || continue  # the runs' folders, not their step logs beside them
    case $(basename "$dir") in *" seed "*|rmu-published|*"no misdirection"*) continue ;; esac
    if compgen -G "$dir/*.safetensors" > /dev/null; then runs+=("$(basename "$dir")=$dir")
    else weightless+=("$(basename "$dir")"); runs+=("$(basename "$dir")=$WORK/remade/runs/$(basename "$dir")"); fi
  done
  # how far each kind's goal at L takes its forget documents past the chosen run's stop levels, at several shares of
  # their directions kept (the sixty-first call's PII biographies lagged at 0.4, 0.77 nats past theirs): it reads
  # the run's unlearn.json and the target, so it goes before the weights are made again
  [[ $METHODS == rmu* ]] && stage --goes-on goal-reach $PY bench/goal_reach.py --target "$WORK/sim" \
    --forget "$WORK/sets/validation" --withheld "$WORK/sim/withheld/validation/nonmember.jsonl" \
    --standins "$WORK/sets/validation" --run "$WORK/report/runs/${METHODS%%,*}" --shares 0,0.25,0.3,0.35,0.4,0.6 \
    --device cuda --out "$STATE/goal_reach.json"
  # the same on train, as a run of the preset would fit and level it there: each kind's largest share whose goal clears
  # its level by 2 nats, the rule the grid's c16 and c17 were read by (sixty-first to sixty-third calls), for this build
  [[ $METHODS == rmu* ]] && stage --goes-on goal-reach-train $PY bench/goal_reach.py --target "$WORK/sim" \
    --forget "$WORK/sets/train" --withheld "$WORK/sim/withheld/train/nonmember.jsonl" --standins "$WORK/sets/train" \
    --preset standins --fit "$WORK/reference-public-tasks.jsonl" --shares 0,0.2,0.25,0.3,0.35,0.4,0.5 \
    --device cuda --out "$STATE/goal_reach_train.json"
  # a resumed report's runs have their records but not their weights: made again, the same to the digit, as many at
  # once as the report runs (REPORT_WORKERS, by the card's memory: each takes a report run's)
  [ ${#weightless[@]} -eq 0 ] || stage remake $PY bench/quality.py remake --work "$WORK" --names "${weightless[@]}" \
    --workers "$(( ${#weightless[@]} < REPORT_WORKERS ? ${#weightless[@]} : REPORT_WORKERS ))"
  local control=() oracle=()  # the retrain oracle's weights (a build carried without them: their stages go without)
  [ -d "$WORK/oracle" ] && { control=(--oracle "$WORK/oracle"); oracle=("oracle=$WORK/oracle"); }
  stage attack $PY bench/attack.py --runs "${runs[@]}" --reference "$WORK/sim" --forget "$WORK/sets/validation" \
    --unseen "$WORK/sim/withheld/validation/nonmember.jsonl" "${control[@]}" --out "$STATE/attack" \
    --jobs "${#runs[@]}"
  [[ ,$METHODS == *,rmu* ]] && stage anchor-hold $PY bench/anchor_hold.py --target "$WORK/sim" --edited "${runs[@]}" \
    --withheld "$WORK/sim/withheld/validation/nonmember.jsonl" --retain "$WORK/sets/validation/retain.jsonl" \
    --device cuda --out "$STATE/anchor_hold.json"
  stage particulars $PY bench/particulars_cpu.py --target "$WORK/sim" --sets "$WORK/sets/validation" \
    --unseen "$WORK/sim/withheld/validation/nonmember.jsonl" --out "$STATE/particulars.json" --edited "${runs[@]}" \
    "${oracle[@]}"
  [ -d "$WORK/oracle" ] && stage stragglers $PY bench/stragglers.py --target "$WORK/sim" \
    --sets "$WORK/sets/validation" --oracle "$WORK/oracle" --out "$STATE/stragglers.json" --runs "${runs[@]}"
  # which part of the model relearning goes through to give each edit back (the layers below it, the edited layers,
  # their MLPs, the layers above), beside the oracle's where carried: on the tiny target, the layers below
  [[ ,$METHODS == *,rmu* ]] && stage --goes-on routes $PY bench/relearn_attackers.py --reference "$WORK/sim" \
    --forget "$WORK/sets/validation" --runs "${runs[@]}" "${oracle[@]}" --device cuda --out "$STATE/routes.json"
  touch "$STATE/all.done"
}

snapshot() {  # this call's code, which the pipeline runs from: a later call's copy of the tree changes nothing it reads
  local root
  root=$(cd "$(dirname "$0")/.." && pwd)
  rm -rf "$STATE/code" && mkdir -p "$STATE/code" \
    && cp -r "$root/repedit" "$root/probes" "$root/bench" "$root/pyproject.toml" "$STATE/code/"
}
start() {  # the pipeline, in the background, on the snapshot
  export REPEDIT_DATA="$STATE/data" PYTHONPATH="$STATE/code${PYTHONPATH:+:$PYTHONPATH}" BUILT RESUME PREVIOUS
  setsid nohup bash "$STATE/code/bench/quality_calls.sh" --pipeline > "$STATE/pipeline.out" 2>&1 < /dev/null &
}

go_on() {  # MARK WHY: this machine's pipeline again, on this call's code, from the stages it finished (MARK removed);
  # its own work directory stands, where an older carried one would overwrite it
  snapshot || exit 1
  rm -f "$STATE/$1"
  echo "=== $2 $(date +%T)" >> "$STATE/progress"
  RESUME= start
}

if [ "${1:-}" = --pipeline ]; then pipeline; exit; fi
started=$(date +%s)
files=()  # PREVIOUS: one results.csv or several, space-separated, each made absolute (the pipeline runs elsewhere)
for file in $PREVIOUS; do
  [ -f "$file" ] || { echo "PREVIOUS=$PREVIOUS: no such results.csv: $file"; exit 1; }
  files+=("$(cd "$(dirname "$file")" && pwd)/$(basename "$file")")
done
PREVIOUS=${files[*]}
if [ -d "$STATE" ] && [ ! -f "$STATE/pipeline.out" ]; then  # made by something else: no pipeline would ever run
  # (the eighty-seventh session's first call made STATE by hand, and two calls waited 1,000 s on nothing)
  echo "STATE=$STATE exists but holds no pipeline (no pipeline.out): name another folder, or remove it"; exit 1
fi
if [ ! -d "$STATE" ]; then
  : "${REPEDIT_DATA:?set REPEDIT_DATA to the folder holding semeval25/, general/, mmlu/}"
  # the build's card scores regurgitation with rouge_score (and nltk): missing, it failed after 7 minutes of training
  $PY -c "import nltk, rouge_score" || {
    echo "install the wheels first (rouge_score, nltk): the build needs them"; exit 1; }
  # what is carried, checked before anything is made: a half-made STATE would read as a pipeline running
  [ -z "$BUILT" ] || [ -f "$BUILT/target.tgz.aa" ] || [ -f "$BUILT/target.txz.aa" ] || {
    echo "BUILT=$BUILT: no target.tgz.aa (or target.txz.aa), the first part"; exit 1; }
  [ -z "$RESUME" ] || [ -n "$BUILT" ] || { echo "RESUME=$RESUME needs BUILT, the build its stages ran on"; exit 1; }
  # a tune's rows hold for the build they ran on, and two builds differ (the twenty-second's unseen NLL 7.40 / 3.48,
  # the twenty-third's 7.20 / 3.44): ranked beside a fresh build's runs they would compare two targets
  [ -z "$PREVIOUS" ] || [ -n "$BUILT" ] || {
    echo "PREVIOUS=$PREVIOUS: an earlier build's tune rows, and this call builds afresh: carry their build as BUILT"
    exit 1; }
  [ -z "$RESUME" ] || [ -f "$RESUME/quality-calls.tgz" ] || {
    echo "RESUME=$RESUME: no quality-calls.tgz, an earlier call's"; exit 1; }
  [ -z "$BUILT" ] || BUILT=$(cd "$BUILT" && pwd)
  [ -z "$RESUME" ] || RESUME=$(cd "$RESUME" && pwd)
  snapshot || exit 1
  cp -r "$REPEDIT_DATA" "$STATE/data" || exit 1
  if [ -n "$RESUME" ]; then  # the stages an earlier call finished, on a machine that has none of them
    tar xzf "$RESUME/quality-calls.tgz" -C "$STATE" || exit 1
    # unpacked or made again here, a failure retried, and a call that stopped before the report (REPORT=0) carried on
    rm -f "$STATE/build.done" "$STATE/remake.done" "$STATE/failed" "$STATE/all.done"
    # REPORT_ONLY: runs named for a report the earlier call finished (the eighty-second session's one new ablation),
    # so the report and every stage it started after run again (their order as its progress file records them);
    # the build's, the tune's and train's relearning stand
    if [ -n "$REPORT_ONLY" ]; then
      after=
      while read -r _ name what _; do
        [ "$what" = start ] || continue
        [ "$name" = report ] && after=1
        [ -z "$after" ] || rm -f "$STATE/$name.done"
      done < "$STATE/progress"
    fi
    echo "=== resumed from $RESUME $(date +%T)" >> "$STATE/progress"
  fi
  start
elif [ -n "$RETRY" ] && [ -f "$STATE/failed" ]; then  # this machine's pipeline stopped at a stage: this call's code
  go_on failed retried
elif [ "$REPORT" != 0 ] && [ -f "$STATE/all.done" ] && [ ! -f "$STATE/report.done" ]; then  # a REPORT=0 call's
  go_on all.done "report asked"  # pipeline, done on this machine, goes on to the report: its tune and relearning kept
fi
send_parts() {  # NAME PATH...: the PATHs as OUT/NAME.tgz.aa, .ab, ... of PART_SIZE
  local name=$1; shift
  tar czf - "$@" | split -b "$PART_SIZE" - "$OUT/.$name.tgz."
  local i parts=("$OUT"/."$name".tgz.*)  # renamed last to first: with .aa there, every part is
  for ((i = ${#parts[@]} - 1; i >= 0; i--)); do mv -f "${parts[i]}" "$OUT/${parts[i]##*/.}"; done
}
copy_out() {  # the results so far to OUT, each archive whole (written aside, then renamed)
  [ -n "$OUT" ] || return 0
  tar czf "$OUT/.quality-calls.tgz" -C "$STATE" --exclude=code --exclude=data . 2>/dev/null
  mv -f "$OUT/.quality-calls.tgz" "$OUT/quality-calls.tgz"
  # each report run's unlearn.json too: its calibration checks say which kind held the stop and how far the others went
  # (and the tune's results.json: every run's checks, the scaled edits' among them)
  [ -d "$WORK" ] && (cd "$WORK" && tar czf "$OUT/.work.tgz" --ignore-failed-read tune/results.csv tune/results.json \
    tuned.json rows build-target.log build-oracle.log oracle_nll.json sim/target_card.json \
    build-train-oracle.log oracle-train/target_card.json oracle_nll_train.json \
    report/runs/*/unlearn.json 2>/dev/null
    mv -f "$OUT/.work.tgz" "$OUT/work.tgz")
  # once a call, unless carried in: the oracle's weights, then the target, the build's files and the oracle's row
  # (BUILT's parts; target.tgz.aa, written last, says both are whole)
  if [ -f "$STATE/build.done" ] && [ -z "$BUILT" ] && [ ! -f "$OUT/target.tgz.aa" ]; then
    (cd "$WORK" && { [ ! -d oracle ] || send_parts oracle oracle; } \
      && send_parts target sim sets ./*.jsonl oracle_nll.json "rows/oracle--retrain.json")
  fi
  return 0
}
copied=$started
while [ ! -f "$STATE/all.done" ] && [ ! -f "$STATE/failed" ] && [ $(($(date +%s) - started)) -lt "$WAIT" ]; do
  sleep "$POLL"
  # every COPY_EVERY seconds, so a call killed at its limit (the device's limit is the budget left when that is less
  # than asked: the thirty-ninth call's third, told to wait 585 s, was killed at 528 s with the report's rows unsent)
  # still returns the stages' logs and the report rows written by then
  [ $(($(date +%s) - copied)) -ge "$COPY_EVERY" ] && { copy_out; copied=$(date +%s); }
done
cat "$STATE/progress" 2>/dev/null
for log in "$STATE"/*.log; do [ -f "$log" ] && { echo "----- $log"; tail -c 2500 "$log"; echo; }; done
# how far each run of the tune and the report not in its results yet had got (its steps as it takes them; the
# ninety-seventh session's call returned three runs unfinished and no word of how far they were), and how long ago
for steps in "$WORK"/tune/runs/*.steps.jsonl "$WORK"/report/runs/*.steps.jsonl; do
  [ -f "$steps" ] || continue
  name=${steps##*/}; name=${name%.steps.jsonl}; results=${steps%/runs/*}/results.csv
  cut -d, -f1 "$results" 2>/dev/null | grep -qxF "$name" && continue  # (a name with a comma, quoted there, is listed)
  echo "unfinished $name: $(wc -l < "$steps") steps, the last $(($(date +%s) - $(stat -c %Y "$steps"))) s ago:" \
    "$(tail -n 1 "$steps" | cut -c1-200)"
done
copy_out
if [ -f "$STATE/failed" ]; then
  echo "a stage failed: its log is above (fix it and call again with RETRY=1 while this machine is warm)"; exit 1
fi
if [ -f "$STATE/all.done" ]; then echo "all stages done"; else echo "still running: call again"; fi
