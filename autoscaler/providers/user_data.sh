#!/bin/bash
# scantide worker boot script (EC2 user data), rendered by autoscaler.providers.ec2.render_user_data.
#
# Template rules: a dollar sign before a lower-case name is a placeholder filled at render time
# (pool, queue, region, ssm_prefix; validated to plain characters); shell variables are
# UPPER-CASE and pass through untouched. No secret is ever rendered here: the ClearML
# credentials are read from SSM Parameter Store at boot with the instance role.
#
# cloud-init runs user data only on an instance's first boot, so this script installs a systemd
# unit that runs the agent on every boot: a warm-pool instance that is stopped and started again
# gets its agent back. The runner shuts the instance down whenever it exits (agent drained,
# crashed, or boot failed) so an instance can never idle forever. The agent runs each task's
# script, `python -m algorithms.entry`, in the worker image when SSM holds WORKER_IMAGE.
set -euo pipefail

install -d -m 0755 /usr/local/sbin /etc/systemd/system
cat > /usr/local/sbin/scantide-agent <<'RUNNER'
#!/bin/bash
set -uo pipefail
POOL=$pool
QUEUE=$queue
REGION=$region
SSM_PREFIX=$ssm_prefix
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

# IMDSv2 only (the instance is launched with HttpTokens=required).
TOKEN="$(curl -fsS --retry 10 --retry-connrefused -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 21600")" || exit 1
INSTANCE_ID="$(curl -fsS --retry 10 -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/instance-id)" || exit 1
say "instance=$INSTANCE_ID queue=$QUEUE"

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

# The worker id is the instance id: the autoscaler joins workers to instances by it.
export CLEARML_WORKER_ID="$INSTANCE_ID"
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
  export CLEARML_AGENT_EXTRA_DOCKER_ARGS="--user 0:0 -e AWS_DEFAULT_REGION=$REGION -e AWS_REGION=$REGION"
  export CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS=false
  trap - EXIT
  say "starting clearml-agent worker=$CLEARML_WORKER_ID image=$WORKER_IMAGE"
  clearml-agent daemon --queue "$QUEUE" --foreground --docker "$WORKER_IMAGE" --gpus all || STATUS=$?
else
  # On the host the agent must run tasks with the python that has scantide (the AMI's), not build
  # a fresh venv per task (every task would fail "No module named 'algorithms'"): the interpreter
  # of the scantide command, else python3.
  SCANTIDE_PYTHON="$(head -n 1 "$(command -v scantide 2>/dev/null || echo /dev/null)" 2>/dev/null | sed -n 's/^#!//p')"
  [ -x "$SCANTIDE_PYTHON" ] || SCANTIDE_PYTHON="$(command -v python3)"
  export CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1 CLEARML_AGENT_SKIP_PIP_VENV_INSTALL="$SCANTIDE_PYTHON"
  trap - EXIT
  say "starting clearml-agent worker=$CLEARML_WORKER_ID (tasks run on the host with $SCANTIDE_PYTHON)"
  clearml-agent daemon --queue "$QUEUE" --foreground || STATUS=$?
fi
power_off "clearml-agent exited with status $STATUS"
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
