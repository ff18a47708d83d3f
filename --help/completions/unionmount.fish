# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_unionmount_global_optspecs
    string join \n f d o= h/help V/version
end

function __fish_unionmount_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_unionmount_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_unionmount_using_subcommand
    set -l cmd (__fish_unionmount_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c unionmount -n "__fish_unionmount_needs_command" -s o -d 'Mount options, comma-separated (repeatable); --help lists them' -r
complete -c unionmount -n "__fish_unionmount_needs_command" -s f -d 'Stay in the foreground (default: detach once the mount is live)'
complete -c unionmount -n "__fish_unionmount_needs_command" -s d -d 'Stay in the foreground and log every operation (debug level; RUST_LOG overrides)'
complete -c unionmount -n "__fish_unionmount_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_needs_command" -s V -l version -d 'Print version'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "which" -d 'Which branch serves a path of a mount, and what it hides below'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "diff" -d 'The change set of an upper directory, as `docker diff` prints it'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "commit" -d 'Turn a mount\'s changes into a new read-only layer directory ("docker commit")'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "export" -d 'The change set as an OCI image layer tarball (podman/docker can import it)'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "layers" -d 'The live stack of a mount: branches, modes, files, bytes, counters, kernel features'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "trace" -d 'Follow a mount\'s copy-ups, whiteouts and opaque directories as they happen'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "tree" -d 'Draw the merged tree with the branch that serves each entry (the layer map)'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "snapshot" -d 'Remember the mount\'s state now, live: the changes so far become a snapshot'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "rollback" -d 'Go back to a snapshot, live: every change made since it is discarded'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "snapshots" -d 'The mount\'s snapshots, oldest first: name, when taken, entries, size, directory'
complete -c unionmount -n "__fish_unionmount_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c unionmount -n "__fish_unionmount_using_subcommand which" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand diff" -l lower -d 'A lower branch (repeatable, top first), to tell changed from added' -r -F
complete -c unionmount -n "__fish_unionmount_using_subcommand diff" -l since -d 'Only the changes made since the snapshot NAME (a mount point\'s)' -r
complete -c unionmount -n "__fish_unionmount_using_subcommand diff" -l json -d 'One JSON array of {"kind", "path", "type"[, "opaque", "moved_from"]}'
complete -c unionmount -n "__fish_unionmount_using_subcommand diff" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand commit" -l to -d 'The new layer directory (must not exist or be empty)' -r -F
complete -c unionmount -n "__fish_unionmount_using_subcommand commit" -l remount -d 'Unmount, commit, empty the upper and mount again with DIR stacked below it'
complete -c unionmount -n "__fish_unionmount_using_subcommand commit" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand export" -l tar -d 'Where to write the tarball (`-`: standard output)' -r -F
complete -c unionmount -n "__fish_unionmount_using_subcommand export" -l lower -d 'A lower branch (repeatable, top first), for a directory moved through the mount' -r -F
complete -c unionmount -n "__fish_unionmount_using_subcommand export" -l digest -d 'Print the layer\'s diff ID (sha256 of the uncompressed tar)'
complete -c unionmount -n "__fish_unionmount_using_subcommand export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand layers" -s h -l help -d 'Print help'
complete -c unionmount -n "__fish_unionmount_using_subcommand trace" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand tree" -l depth -d 'Levels below PATH to draw (default: all)' -r
complete -c unionmount -n "__fish_unionmount_using_subcommand tree" -l html -d 'Write a self-contained HTML page to FILE (`-`: standard output) instead' -r -F
complete -c unionmount -n "__fish_unionmount_using_subcommand tree" -l color -d 'Colour: auto (on a terminal, unless NO_COLOR is set), always or never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c unionmount -n "__fish_unionmount_using_subcommand tree" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand snapshot" -l drop -d 'Drop the snapshot NAME instead, keeping its changes' -r
complete -c unionmount -n "__fish_unionmount_using_subcommand snapshot" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand rollback" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand snapshots" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "which" -d 'Which branch serves a path of a mount, and what it hides below'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "diff" -d 'The change set of an upper directory, as `docker diff` prints it'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "commit" -d 'Turn a mount\'s changes into a new read-only layer directory ("docker commit")'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "export" -d 'The change set as an OCI image layer tarball (podman/docker can import it)'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "layers" -d 'The live stack of a mount: branches, modes, files, bytes, counters, kernel features'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "trace" -d 'Follow a mount\'s copy-ups, whiteouts and opaque directories as they happen'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "tree" -d 'Draw the merged tree with the branch that serves each entry (the layer map)'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "snapshot" -d 'Remember the mount\'s state now, live: the changes so far become a snapshot'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "rollback" -d 'Go back to a snapshot, live: every change made since it is discarded'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "snapshots" -d 'The mount\'s snapshots, oldest first: name, when taken, entries, size, directory'
complete -c unionmount -n "__fish_unionmount_using_subcommand help; and not __fish_seen_subcommand_from which diff commit export layers trace tree snapshot rollback snapshots help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
