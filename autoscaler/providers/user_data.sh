#!/bin/bash
# scantide worker boot script (EC2 user data), rendered by autoscaler.providers.ec2.render_user_data.
#
# Template rules: a dollar sign before a lower-case name is a placeholder filled at render time
# (pool, queue, region, ssm_prefix, slots; validated to plain characters); shell variables are
# UPPER-CASE and pass through untouched. No secret is ever rendered here: the ClearML
# credentials are read from SSM Parameter Store at boot with the instance role.
#
# cloud-init runs user data only on an instance's first boot, so this script installs a systemd
# unit that runs the agent on every boot: a warm-pool instance that is stopped and started again
# gets its agent back. The runner shuts the instance down whenever it exits (agent drained,
# crashed, or boot failed) so an instance can never idle forever. The agent runs each task's
# script, `python -m algorithms.entry`, in the worker image when SSM holds WORKER_IMAGE. A pool
# with several slots (`[pools.resources] slots`) gets that many agents on the instance, each
# taking one task at a time; the runner shuts the instance down once all of them have exited.
# On a spot instance the tasks and the runner watch EC2's two-minute interruption notice: see
# watch_notice below.
set -euo pipefail

install -d -m 0755 /usr/local/sbin /etc/systemd/system
cat > /usr/local/sbin/scantide-agent <<'RUNNER'
#!/bin/bash
set -uo pipefail
POOL=$pool
QUEUE=$queue
REGION=$region
SSM_PREFIX=$ssm_prefix
SLOTS=$slots
LOG=/var/log/scantide-agent.log

# Everything to the log file and the console (EC2 "Get system log").
exec > >(tee -a "$LOG" | logger -t scantide-agent -s 2>/dev/console) 2>&1
say() { echo "$(date -u +%FT%TZ) scantide-agent pool=$POOL $*"; }

power_off() {
  # A stop or reboot already under way (a warm-pool stop) is not ours to turn into a halt.
  if [ "$(systemctl is-system-running 2>/dev/null)" = "stopping" ]; then return; fi
  say "shutting down: $1"
  shutdown -h now
}
trap 'power_off "runner exited before the agent ran"' EXIT

# IMDSv2 only (the instance is launched with HttpTokens=required): a fresh session token per read.
IMDS=http://169.254.169.254
imds() {  # $1: the meta-data path; the rest: more curl options
  local WHAT="$1" TOKEN
  shift
  TOKEN="$(curl -fsS --retry 10 --retry-connrefused -X PUT "$IMDS/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 21600")" || return 1
  curl -fsS "$@" -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/$WHAT"
}
INSTANCE_ID="$(imds instance-id --retry 10)" || exit 1
# A spot instance's tasks read the interruption notice themselves (service/spot.py), and hand their
# task back when it comes; an on-demand instance never gets one.
LIFECYCLE="$(imds instance-life-cycle --retry 10)" || LIFECYCLE=unknown
SPOT_NOTICE_URL=""
if [ "$LIFECYCLE" = spot ]; then SPOT_NOTICE_URL="$IMDS"; export SCANTIDE_SPOT_NOTICE_URL="$IMDS"; fi
say "instance=$INSTANCE_ID queue=$QUEUE lifecycle=$LIFECYCLE"

# The instance role can lag a few seconds behind boot: retry.
ssm_param() {
  for ATTEMPT in 1 2 3 4 5 6; do
    if aws ssm get-parameter --region "$REGION" --with-decryption --name "$1" \
        --query Parameter.Value --output text; then
      return 0
    fi
    sleep $((ATTEMPT * 5))
  done
  say "cannot read SSM parameter $1" >&2
  return 1
}
CLEARML_API_HOST="$(ssm_param "$SSM_PREFIX/CLEARML_API_HOST")" || exit 1
CLEARML_API_ACCESS_KEY="$(ssm_param "$SSM_PREFIX/CLEARML_API_ACCESS_KEY")" || exit 1
CLEARML_API_SECRET_KEY="$(ssm_param "$SSM_PREFIX/CLEARML_API_SECRET_KEY")" || exit 1
export CLEARML_API_HOST CLEARML_API_ACCESS_KEY CLEARML_API_SECRET_KEY

# Optional: the worker image. With it the agent runs in docker mode and each task in its
# template's image (`scantide clearml register-template --image`), this one by default; without
# it tasks run on the host, whose python must have scantide installed (a custom AMI).
WORKER_IMAGE="$(aws ssm get-parameters --region "$REGION" --names "$SSM_PREFIX/WORKER_IMAGE" \
  --query 'Parameters[0].Value' --output text)" || WORKER_IMAGE=""
[ "$WORKER_IMAGE" = "None" ] && WORKER_IMAGE=""
export AWS_DEFAULT_REGION="$REGION" AWS_REGION="$REGION"  # boto3 in the task finds no region on its own

# The AMI or a warm-pool instance may have the agent already.
if ! command -v clearml-agent >/dev/null 2>&1; then
  say "installing clearml-agent"
  python3 -m pip install --quiet --upgrade clearml-agent || exit 1
fi

# The worker id is the instance id (one slot) or "<instance id>:<k>" for slot k of several: the
# autoscaler joins workers to instances by it (autoscaler.model.slot_worker_ids).
worker_id() { if [ "$SLOTS" -gt 1 ]; then echo "$INSTANCE_ID:$1"; else echo "$INSTANCE_ID"; fi; }

# One agent gets every GPU, as ever. Several share them: slot k gets GPU k mod the GPU count
# (clearml-agent's --gpus: in docker mode the task container gets `--gpus device=N`, on the host
# the task gets CUDA_VISIBLE_DEVICES=N), so on a one-GPU instance every slot shares GPU 0.
GPU_COUNT="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')"
[ "$GPU_COUNT" -gt 0 ] 2>/dev/null || GPU_COUNT=0
slot_gpus() { if [ "$SLOTS" -gt 1 ] && [ "$GPU_COUNT" -gt 0 ]; then echo $(($1 % GPU_COUNT)); else echo all; fi; }

# clearml-agent runs several daemons on one machine by itself: each registers its own worker id
# (a second daemon with the same id refuses to start) and takes the lowest free "instance slot",
# read from the others' pid files (<temp dir>/.clearmlagent_<pid>_*.tmp), which suffixes its
# venvs and apt-cache folders (.1, .2, ...; the vcs and pip caches are shared). Two daemons that
# start at the same moment can both take slot 0 and share a venvs folder, so each one starts once
# the one before has written its pid file (or has exited, or a minute has passed).
registered() {
  for ATTEMPT in $(seq 60); do
    compgen -G "${TMPDIR:-/tmp}/.clearmlagent_$1_*.tmp" >/dev/null && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

# Each daemon runs in the foreground as a child of this runner (not --detached, whose launcher
# returns at once): the runner waits for every one and powers off after the last has exited.
# $1: what one agent gets for --gpus ("" for no flag: the host's default); the rest: the daemon's arguments.
start_agents() {
  local ONE_GPU="$1" K GPU
  shift
  AGENT_PIDS=()
  for ((K = 0; K < SLOTS; K++)); do
    GPU="$(slot_gpus "$K")"
    [ "$GPU" = all ] && GPU="$ONE_GPU"
    if [ "$K" -gt 0 ] && ! registered "${AGENT_PIDS[$((K - 1))]}"; then
      say "clearml-agent worker=$(worker_id $((K - 1))) wrote no pid file; starting the next anyway"
    fi
    CLEARML_WORKER_ID="$(worker_id "$K")" clearml-agent daemon "$@" ${GPU:+--gpus "$GPU"} &
    AGENT_PIDS+=("$!")
    say "started clearml-agent worker=$(worker_id "$K") pid=$! gpus=${GPU:-default}"
  done
}

# On a spot instance, once EC2 posts the interruption notice: the agents are killed outright so that
# none takes another task (a SIGTERM would make an agent mark its running task stopped), while each
# running task's entry point, which reads the notice too, hands its task back and exits.
watch_notice() {
  local NOTICE
  until NOTICE="$(imds spot/instance-action 2>/dev/null)"; do sleep 2; done
  say "spot interruption notice $NOTICE: stopping the agents; running tasks hand themselves back"
  kill -KILL "${AGENT_PIDS[@]}" 2>/dev/null
}

wait_agents() {
  local PID CODE STATUS=0
  for PID in "${AGENT_PIDS[@]}"; do
    wait "$PID"
    CODE=$?
    [ "$CODE" -ne 0 ] && STATUS=$CODE
  done
  return "$STATUS"
}

STATUS=0
if [ -n "$WORKER_IMAGE" ]; then
  case "$WORKER_IMAGE" in  # a private ECR image needs a login (the role reads ECR)
    *.dkr.ecr.*.amazonaws.com/*)
      aws ecr get-login-password --region "$REGION" \
        | docker login --username AWS --password-stdin "${WORKER_IMAGE%%/*}" || exit 1 ;;
  esac
  docker pull --quiet "$WORKER_IMAGE" || exit 1
  # The image's USER is uid 10001, but the agent's start-up script in each task container assumes
  # root: it bind-mounts the task's config from a 0600 root-owned file (unreadable to uid 10001, so
  # the in-container agent fails at once), mounts its caches under /root, runs apt-get and
  # `pip install -U clearml-agent`. --user 0:0 runs task containers as root (docs/deploy.md: worker
  # image). No per-task apt-get: the image has git, python3.11 with pip and headless OpenCV's libs.
  export CLEARML_AGENT_EXTRA_DOCKER_ARGS="--user 0:0 -e AWS_DEFAULT_REGION=$REGION -e AWS_REGION=$REGION${SPOT_NOTICE_URL:+ -e SCANTIDE_SPOT_NOTICE_URL=$SPOT_NOTICE_URL}"
  export CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS=false
  trap - EXIT
  say "starting $SLOTS clearml-agent(s) worker=$(worker_id 0) image=$WORKER_IMAGE"
  start_agents all --queue "$QUEUE" --foreground --docker "$WORKER_IMAGE"
else
  # On the host the agent must run tasks with the python that has scantide (the AMI's), not build
  # a fresh venv per task (every task would fail "No module named 'algorithms'"): the interpreter
  # of the scantide command, else python3.
  SCANTIDE_PYTHON="$(head -n 1 "$(command -v scantide 2>/dev/null || echo /dev/null)" 2>/dev/null | sed -n 's/^#!//p')"
  [ -x "$SCANTIDE_PYTHON" ] || SCANTIDE_PYTHON="$(command -v python3)"
  export CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1 CLEARML_AGENT_SKIP_PIP_VENV_INSTALL="$SCANTIDE_PYTHON"
  trap - EXIT
  say "starting $SLOTS clearml-agent(s) worker=$(worker_id 0) (tasks run on the host with $SCANTIDE_PYTHON)"
  start_agents "" --queue "$QUEUE" --foreground
fi
WATCH_PID=""
if [ -n "$SPOT_NOTICE_URL" ]; then watch_notice & WATCH_PID=$!; fi
wait_agents || STATUS=$?
if [ -n "$WATCH_PID" ] && ! kill -0 "$WATCH_PID" 2>/dev/null; then
  # EC2 takes the instance at the notice's time; powering off now would cut the hand-backs short
  say "spot interruption: the agents are stopped; leaving the instance to EC2"
  sleep 150
fi
[ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null
power_off "clearml-agent exited with status $STATUS ($SLOTS agent(s), all exited)"
RUNNER
chmod 0755 /usr/local/sbin/scantide-agent

cat > /etc/systemd/system/scantide-agent.service <<'UNIT'
[Unit]
Description=scantide clearml-agent worker
Wants=network-online.target
After=network-online.target cloud-final.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/scantide-agent
Restart=no
KillSignal=SIGTERM
TimeoutStopSec=120

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
# --no-block: cloud-final is itself ordered before the unit; waiting here would deadlock boot.
systemctl enable --now --no-block scantide-agent.service
