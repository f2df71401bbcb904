//! `herd-worker install`: sets the worker up as a systemd user service for the volunteer who runs
//! it. It writes the unit shipped in `worker/systemd/herd-worker.service` with this binary's
//! command line to `~/.config/systemd/user/herd-worker.service`, then (unless told not to) asks
//! the user's systemd to reload, enable and start it. Nothing needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use herd_net::JoinString;

/// The unit, with `@EXEC_START@` where the command line goes.
pub const UNIT_TEMPLATE: &str = include_str!("../systemd/herd-worker.service");

/// The unit's file name.
pub const UNIT_NAME: &str = "herd-worker.service";

/// What to install.
#[derive(Clone, Debug)]
pub struct Install {
    pub join: JoinString,
    /// The account key to attach the machine with (stored in the data directory, not in the
    /// unit); without it, the key already stored there, or `name` on a project with anonymous
    /// volunteers.
    pub account_key: Option<String>,
    pub name: Option<String>,
    pub team: Option<String>,
    /// Default: `$XDG_DATA_HOME/herd-worker` or `~/.local/share/herd-worker`.
    pub data_dir: Option<PathBuf>,
    /// Enable and start the service after writing it.
    pub start: bool,
}

/// Quotes one argument for a systemd `ExecStart=` line: double quotes, C escapes, and `%` and `$`
/// doubled so systemd expands neither specifiers nor variables in it.
pub fn systemd_quote(argument: &str) -> String {
    let mut quoted = String::with_capacity(argument.len() + 2);
    quoted.push('"');
    for c in argument.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn env_dir(variable: &str) -> Option<PathBuf> {
    std::env::var_os(variable)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The unit's text for this binary and these settings.
pub fn unit_text(exe: &Path, data_dir: &Path, spec: &Install) -> String {
    let mut arguments = vec![
        exe.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--join".into(),
        spec.join.to_string(),
    ];
    if let Some(name) = &spec.name {
        arguments.extend(["--name".into(), name.clone()]);
    }
    if let Some(team) = &spec.team {
        arguments.extend(["--team".into(), team.clone()]);
    }
    let exec_start: Vec<String> = arguments.iter().map(|a| systemd_quote(a)).collect();
    UNIT_TEMPLATE.replace("@EXEC_START@", &exec_start.join(" "))
}

/// Writes the unit and, if asked, enables and starts it.
pub fn install(spec: &Install) -> anyhow::Result<()> {
    let home = env_dir("HOME").context("HOME is not set: cannot find the user's directories")?;
    let config_home = env_dir("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
    let data_dir = match &spec.data_dir {
        Some(dir) => dir.clone(),
        None => env_dir("XDG_DATA_HOME")
            .unwrap_or_else(|| home.join(".local/share"))
            .join("herd-worker"),
    };
    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .context("find this program's path")?;
    let unit_dir = config_home.join("systemd/user");
    std::fs::create_dir_all(&unit_dir).with_context(|| format!("create {}", unit_dir.display()))?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    // The key goes in the data directory (0600), never in the unit, which others may read.
    if let Some(key) = &spec.account_key {
        crate::account::store(&data_dir, key)?;
    }
    if spec.name.is_none() && crate::account::load(&data_dir)?.is_none() {
        bail!(
            "give --account-key KEY (sign up with `herd account create NAME`), or --name on a \
             project with anonymous volunteers"
        );
    }
    let unit_path = unit_dir.join(UNIT_NAME);
    herd_net::write_file(
        &unit_path,
        unit_text(&exe, &data_dir, spec).as_bytes(),
        0o644,
    )
    .with_context(|| format!("write {}", unit_path.display()))?;
    println!("wrote {}", unit_path.display());
    if spec.start {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
        println!(
            "herd-worker is running and starts with your session; its log: journalctl --user -u herd-worker -f"
        );
    } else {
        println!(
            "start it with: systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}"
        );
    }
    println!(
        "preferences: {} (see the README's table)",
        crate::preferences_path(&data_dir).display()
    );
    Ok(())
}

fn systemctl(arguments: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .arg("--user")
        .args(arguments)
        .status()
        .context("run systemctl (is systemd managing this session?)")?;
    if !status.success() {
        bail!("systemctl --user {} failed ({status})", arguments.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_so_systemd_expands_nothing() {
        assert_eq!(systemd_quote("plain"), "\"plain\"");
        assert_eq!(
            systemd_quote("a \"b\" \\c %h $HOME"),
            "\"a \\\"b\\\" \\\\c %%h $$HOME\""
        );
    }

    #[test]
    fn the_unit_carries_the_command_line_and_no_restart_on_permanent_failures() {
        let spec = Install {
            join: "herd://127.0.0.1:4433?cert=00000000000000000000000000000000000000000000000000000000000000aa&key=00000000000000000000000000000000000000000000000000000000000000bb"
                .parse()
                .expect("join"),
            account_key: None,
            name: Some("Ada Lovelace".into()),
            team: Some("engines".into()),
            data_dir: None,
            start: false,
        };
        let unit = unit_text(
            Path::new("/opt/herd/herd-worker"),
            Path::new("/home/ada/data"),
            &spec,
        );
        let exec = unit
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart");
        assert!(
            exec.starts_with(
                "ExecStart=\"/opt/herd/herd-worker\" \"--data-dir\" \"/home/ada/data\""
            )
        );
        assert!(exec.contains("\"--name\" \"Ada Lovelace\" \"--team\" \"engines\""));
        assert!(exec.contains("herd://127.0.0.1:4433?cert="));
        assert!(unit.contains("RestartPreventExitStatus=2 3"));
        assert!(!unit.contains("@EXEC_START@"));
    }
}
