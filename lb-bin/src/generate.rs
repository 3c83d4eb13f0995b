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
