# Sourced by the launch scripts before they cd to the repository: path arguments given relative to
# the caller's folder are made absolute, so `cd` changes nothing for the user.
#   CALLER_DIR           the folder the script was started from
#   caller_path P        P as an absolute path when it is relative and exists under CALLER_DIR, else P
#   caller_value FLAG V  the value V of path flag FLAG: --output_dir (which may not exist yet) always
#                        relative to the caller, any other through caller_path
#   caller_args ARGS...  fills the array CALLER_ARGS with ARGS, the value of each path flag (also
#                        --flag=value) through caller_value

CALLER_DIR=$PWD
PATH_FLAGS=" config output_dir training.output_dir deepspeed_config training.deepspeed_config resume checkpoint.resume \
dataset_name data.dataset_name eval_dataset_name data.eval_dataset_name tokenizer data.tokenizer name_or_path \
model.name_or_path "

caller_path() {
    local path=$1
    if [[ "$path" != /* && -e "$CALLER_DIR/$path" ]]; then path=$CALLER_DIR/$path; fi
    printf '%s' "$path"
}

caller_value() {
    case "$1" in
        output_dir|training.output_dir) [[ "$2" == /* ]] && printf '%s' "$2" || printf '%s' "$CALLER_DIR/$2" ;;
        *) caller_path "$2" ;;
    esac
}

caller_args() {
    CALLER_ARGS=()
    local flag="" arg name
    for arg in "$@"; do
        if [[ -n "$flag" ]]; then
            CALLER_ARGS+=("$(caller_value "$flag" "$arg")")
            flag=""
            continue
        fi
        if [[ "$arg" == --*=* ]]; then
            name=${arg%%=*}; name=${name#--}
            if [[ "$PATH_FLAGS" == *" $name "* ]]; then arg="--$name=$(caller_value "$name" "${arg#*=}")"; fi
        elif [[ "$arg" == --* && "$PATH_FLAGS" == *" ${arg#--} "* ]]; then
            flag=${arg#--}
        fi
        CALLER_ARGS+=("$arg")
    done
}
