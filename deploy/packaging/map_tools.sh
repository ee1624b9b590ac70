#!/bin/bash
# Entrypoint of the cxr_enhance_classify MAP image (/var/holoscan/tools), with the commands of holoscan-cli's
# packager `tools` script: no argument (or any other) runs the app's command from app.json with those arguments;
# `show [app|pkg]` prints the manifests, `env` the environment, `extract` copies app/config/models/docs to a mounted
# /var/run/holoscan/export, `help` the usage. Written for this project (python3 reads the JSON: the image has no jq).
set -u

: "${HOLOSCAN_APPLICATION:=/opt/holoscan/app}"
: "${HOLOSCAN_INPUT_PATH:=/var/holoscan/input}"
: "${HOLOSCAN_OUTPUT_PATH:=/var/holoscan/output}"
: "${HOLOSCAN_WORKDIR:=/var/holoscan/}"
: "${HOLOSCAN_MODEL_PATH:=/opt/holoscan/models/}"
: "${HOLOSCAN_DOCS_PATH:=/opt/holoscan/docs/}"
: "${HOLOSCAN_CONFIG_PATH:=/var/holoscan/app.yaml}"
: "${HOLOSCAN_APP_MANIFEST_PATH:=/etc/holoscan/app.json}"
: "${HOLOSCAN_PKG_MANIFEST_PATH:=/etc/holoscan/pkg.json}"
export HOLOSCAN_APPLICATION HOLOSCAN_INPUT_PATH HOLOSCAN_OUTPUT_PATH HOLOSCAN_WORKDIR HOLOSCAN_MODEL_PATH \
    HOLOSCAN_DOCS_PATH HOLOSCAN_CONFIG_PATH HOLOSCAN_APP_MANIFEST_PATH HOLOSCAN_PKG_MANIFEST_PATH

stamp() { date -u '+%Y-%m-%d %H:%M:%S'; }
info() { echo "$(stamp) [INFO] $*" >&2; }
fail() { echo "$(stamp) [ERROR] $*" >&2; exit 1; }

show_json() {  # $1 title, $2 file
    if [ -f "$2" ]; then
        echo "============================== $1 =============================="
        python3 -m json.tool "$2"
    else
        echo "$2 does not exist" >&2
        return 1
    fi
}

cmd_show() {
    local what="${1:-all}" rc=0
    echo
    if [ "$what" = all ] || [ "$what" = app ]; then show_json app.json "$HOLOSCAN_APP_MANIFEST_PATH" || rc=1; echo; fi
    if [ "$what" = all ] || [ "$what" = pkg ]; then show_json pkg.json "$HOLOSCAN_PKG_MANIFEST_PATH" || rc=1; echo; fi
    return $rc
}

cmd_extract() {
    local root=/var/run/holoscan/export
    [ -d "$root" ] || fail "no volume mounted at $root"
    [ -w "$root" ] || fail "$root is not writable by uid $(id -u): create it on the host with that owner first"
    mkdir -p "$root/config"
    cp -r "$HOLOSCAN_APPLICATION" "$root/app"
    cp "$HOLOSCAN_APP_MANIFEST_PATH" "$HOLOSCAN_PKG_MANIFEST_PATH" "$HOLOSCAN_CONFIG_PATH" "$root/config/"
    cp -r "$HOLOSCAN_MODEL_PATH" "$root/models"
    [ -d "$HOLOSCAN_DOCS_PATH" ] && cp -r "$HOLOSCAN_DOCS_PATH" "$root/docs"
    info "extracted app, config, models to $root"
}

cmd_help() {
    cat <<'EOF'
USAGE: /var/holoscan/tools [command] [arguments]...
 Command List
    (none)   run the application (the command in app.json) with the given arguments
    show     print manifest file(s): [app|pkg] (default both)
    env      print all environment variables
    extract  copy app, config (app.json, pkg.json, app.yaml) and models to a mounted /var/run/holoscan/export
    help     this text
EOF
}

cmd_run() {
    local command
    command=$(python3 -c 'import json,shlex,sys; print(shlex.join(json.loads(json.load(open(sys.argv[1]))["command"])))' \
        "$HOLOSCAN_APP_MANIFEST_PATH" 2>/dev/null) || fail "cannot read the command from $HOLOSCAN_APP_MANIFEST_PATH"
    [ -n "$command" ] || fail "empty command in $HOLOSCAN_APP_MANIFEST_PATH"
    info "Launching application $command $*..."
    eval "$command" '"$@"'
    local rc=$?
    info "Application exited with $rc."
    return $rc
}

case "${1:-}" in
    show) shift; cmd_show "$@" ;;
    env) env -0 | sort -z | tr '\0' '\n' ;;
    extract) cmd_extract ;;
    help) cmd_help ;;
    *) cmd_run "$@" ;;
esac
