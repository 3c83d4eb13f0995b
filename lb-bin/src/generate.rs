//! `ringlb generate`: the man pages and shell completions, written from the
//! very clap definition the binary parses its arguments with, so they list
//! every subcommand and option of this build. Run on the main thread, once,
//! when a package is built (scripts/build-deb.sh); hidden from `--help`.
//!
//! A subcommand of the binary rather than a build script or a second
//! binary: those would need the `Cli` type moved out of main.rs, and a
//! build script would write into OUT_DIR where no packager finds the files.

use std::path::Path;

use anyhow::Context;
use clap_complete::Shell;

/// The shells whose completions the package ships, and the file name each
/// one's completion directory expects (bash-completion looks the command's
/// own name up, zsh an underscore one, fish `NAME.fish`).
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "ringlb"),
    (Shell::Zsh, "_ringlb"),
    (Shell::Fish, "ringlb.fish"),
];

/// What `ringlb.1` adds to the sections clap_mangen writes from the
/// command-line definition: the files, the signals and where the rest of
/// the documentation is (roff).
const MAN_TAIL: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the config file: validated first; a refused file is logged and the running config keeps serving.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting, let connections finish (up to \fIshutdown_timeout\fR), exit 0.
.TP
\fBSIGUSR1\fR
Reopen the access log (after rotation).
.TP
\fBSIGUSR2\fR
Binary upgrade without downtime: start this command line again and hand it the listening sockets (needs \fB\-\-upgrade\-socket\fR).
.SH FILES
.TP
\fI/etc/ringlb/ringlb.toml\fR
The configuration (TOML); check it with \fBringlb check \-\-config\fR \fIFILE\fR.
.TP
\fI/usr/lib/systemd/system/ringlb.service\fR, \fI/usr/lib/systemd/system/ringlb.socket\fR
The systemd units (a source install: under \fI/etc/systemd/system\fR).
.TP
\fI/run/ringlb/upgrade.sock\fR
The unit's upgrade socket.
.TP
\fI/var/log/ringlb/\fR
The access log's directory, when \fIaccess_log\fR is on.
.SH SEE ALSO
\fBsystemd.service\fR(5), \fBsystemctl\fR(1).
The documentation: \fI/usr/share/doc/ringlb/docs/\fR (a source install: \fI/usr/local/share/doc/ringlb/docs/\fR):
\fIconfig.md\fR (every key), \fIdeploy.md\fR (systemd, reload, upgrades), \fIadmin.md\fR (the admin API, status page and metrics).
"#;

/// Writes `ringlb.1` and a page per visible subcommand (`ringlb-check.1`,
/// …) into `man`, and the bash, zsh and fish completions into
/// `completions`. The directories must exist.
pub(crate) fn write(
    cmd: clap::Command,
    man: Option<&Path>,
    completions: Option<&Path>,
) -> anyhow::Result<()> {
    if man.is_none() && completions.is_none() {
        anyhow::bail!("nothing to generate: give --man DIR and/or --completions DIR");
    }
    if let Some(dir) = man {
        clap_mangen::generate_to(cmd.clone(), dir)
            .with_context(|| format!("writing the man pages into {}", dir.display()))?;
        let main_page = dir.join("ringlb.1");
        let mut page = std::fs::read_to_string(&main_page)
            .with_context(|| format!("reading back {}", main_page.display()))?;
        page.push_str(MAN_TAIL);
        std::fs::write(&main_page, page)
            .with_context(|| format!("writing {}", main_page.display()))?;
    }
    if let Some(dir) = completions {
        for (shell, file) in SHELLS {
            let mut cmd = cmd.clone();
            // Into memory first: clap_complete's writer panics on an I/O
            // error, a Vec never fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ringlb", &mut script);
            let path = dir.join(file);
            std::fs::write(&path, script)
                .with_context(|| format!("writing the {shell} completion to {}", path.display()))?;
        }
    }
    Ok(())
}
