//! Statistics exports in BOINC's format, so that existing stats sites (BOINCstats, Free-DC...)
//! read Herd's credit with the parsers they have: `tables.xml`, and gzipped `user.gz`,
//! `team.gz` and `host.gz` in `DATA_DIR/stats/`, with the element names and structure of BOINC's
//! `db_dump`. Only volunteers, teams and hosts with credit are listed, as BOINC does.
//! Regenerated every [`EXPORT_EVERY`] and on demand; each file is replaced whole (written aside,
//! then renamed), so a reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use herd_protocol::PublicKey;
use herd_store::StatsDump;

/// How often the exports are regenerated.
pub(crate) const EXPORT_EVERY: Duration = Duration::from_secs(3600);

/// The files, as stats sites fetch them from a project's `stats/` directory.
pub(crate) const FILES: [&str; 4] = ["tables.xml", "user.gz", "team.gz", "host.gz"];

/// The exports' XML text, before compression.
#[derive(Debug, PartialEq)]
pub(crate) struct Exports {
    pub(crate) tables: String,
    pub(crate) users: String,
    pub(crate) teams: String,
    pub(crate) hosts: String,
}

/// Escapes text for an XML element (or HTML: the dashboard's server-made pages use it too).
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => escaped.push(c),
        }
    }
    escaped
}

/// A volunteer's cross-project id: BOINC derives it from the account's email, which Herd does
/// not have; this is as stable and as opaque (32 hex digits), unique to the project.
fn cpid(project: &PublicKey, volunteer: &str) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("herd stats cpid v1");
    hasher.update(&project.0);
    hasher.update(volunteer.as_bytes());
    hex::encode(&hasher.finalize().as_bytes()[..16])
}

fn seconds(ms: u64) -> u64 {
    ms / 1000
}

fn document(root: &str, body: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root}>\n{body}</{root}>\n")
}

/// Renders the exports of `dump` as of `now_ms`.
pub(crate) fn render(dump: &StatsDump, project: &PublicKey, now_ms: u64) -> Exports {
    let mut users = String::new();
    for v in dump.volunteers.iter().filter(|v| v.credit > 0.0) {
        users.push_str(&format!(
            "<user>\n <id>{}</id>\n <name>{}</name>\n <create_time>{}</create_time>\n \
             <total_credit>{:.6}</total_credit>\n <expavg_credit>{:.6}</expavg_credit>\n \
             <expavg_time>{:.6}</expavg_time>\n <cpid>{}</cpid>\n",
            v.id,
            escape(&v.name),
            seconds(v.created_ms),
            v.credit,
            v.recent_average_credit,
            v.rac_ms as f64 / 1000.0,
            cpid(project, &v.name),
        ));
        if let Some(team) = v.team_id {
            users.push_str(&format!(" <teamid>{team}</teamid>\n"));
        }
        users.push_str("</user>\n");
    }
    let mut teams = String::new();
    for t in dump.teams.iter().filter(|t| t.credit > 0.0) {
        teams.push_str(&format!(
            "<team>\n <id>{}</id>\n <type>0</type>\n <name>{}</name>\n <userid>{}</userid>\n \
             <total_credit>{:.6}</total_credit>\n <expavg_credit>{:.6}</expavg_credit>\n \
             <expavg_time>{:.6}</expavg_time>\n <founder_name>{}</founder_name>\n \
             <create_time>{}</create_time>\n <nusers>{}</nusers>\n <country></country>\n</team>\n",
            t.id,
            escape(&t.name),
            t.founder_id,
            t.credit,
            t.recent_average_credit,
            t.rac_ms as f64 / 1000.0,
            escape(&t.founder_name),
            seconds(t.created_ms),
            t.members,
        ));
    }
    let mut hosts = String::new();
    for h in dump.hosts.iter().filter(|h| h.credit > 0.0) {
        hosts.push_str(&format!(
            "<host>\n <id>{}</id>\n <userid>{}</userid>\n <total_credit>{:.6}</total_credit>\n \
             <expavg_credit>{:.6}</expavg_credit>\n <expavg_time>{:.6}</expavg_time>\n \
             <p_vendor></p_vendor>\n <p_model></p_model>\n <os_name></os_name>\n \
             <os_version></os_version>\n <create_time>{}</create_time>\n \
             <rpc_time>{}</rpc_time>\n <ncpus>{}</ncpus>\n</host>\n",
            h.id,
            h.volunteer_id,
            h.credit,
            h.recent_average_credit,
            h.rac_ms as f64 / 1000.0,
            seconds(h.created_ms),
            seconds(h.last_seen_ms),
            h.cores,
        ));
    }
    let total_credit: f64 = dump.volunteers.iter().map(|v| v.credit).sum();
    let tables = format!(
        "    <update_time>{}</update_time>\n    <nusers_total>{}</nusers_total>\n    \
         <nteams_total>{}</nteams_total>\n    <nhosts_total>{}</nhosts_total>\n    \
         <total_credit>{:.6}</total_credit>\n    <applications>\n        <application>\n            \
         <name>herd</name>\n        </application>\n    </applications>\n",
        seconds(now_ms),
        dump.volunteers.iter().filter(|v| v.credit > 0.0).count(),
        dump.teams.iter().filter(|t| t.credit > 0.0).count(),
        dump.hosts.iter().filter(|h| h.credit > 0.0).count(),
        total_credit,
    );
    Exports {
        tables: document("tables", &tables),
        users: document("users", &users),
        teams: document("teams", &teams),
        hosts: document("hosts", &hosts),
    }
}

/// Writes the exports into `dir`: `tables.xml` as is, the others gzipped.
pub(crate) fn write(dir: &Path, exports: &Exports) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let gzip = |text: &str| -> anyhow::Result<Vec<u8>> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes())?;
        Ok(encoder.finish()?)
    };
    let files: [(&str, Vec<u8>); 4] = [
        ("user.gz", gzip(&exports.users)?),
        ("team.gz", gzip(&exports.teams)?),
        ("host.gz", gzip(&exports.hosts)?),
        // Last: its update_time says the others are complete.
        ("tables.xml", exports.tables.clone().into_bytes()),
    ];
    for (name, bytes) in files {
        let path = dir.join(name);
        let aside = dir.join(format!(".{name}.new"));
        std::fs::write(&aside, &bytes).with_context(|| format!("write {}", aside.display()))?;
        std::fs::rename(&aside, &path).with_context(|| format!("replace {}", path.display()))?;
    }
    Ok(())
}

/// Where the exports live under the data directory.
pub(crate) fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("stats")
}

/// Regenerates the exports now; returns their update time (Unix seconds).
pub(crate) async fn export(shared: &crate::Shared) -> anyhow::Result<u64> {
    let now_ms = crate::now_ms();
    let dump = shared.store.stats_dump(now_ms).await?;
    let exports = render(&dump, &shared.project_key.public_key(), now_ms);
    let dir = shared.stats_dir.clone();
    crate::blocking(move || write(&dir, &exports)).await?;
    Ok(now_ms / 1000)
}

/// Regenerates the exports at start and every [`EXPORT_EVERY`].
pub(crate) async fn export_on_schedule(shared: std::sync::Arc<crate::Shared>) {
    let mut interval = tokio::time::interval(EXPORT_EVERY);
    loop {
        interval.tick().await;
        if let Err(error) = export(&shared).await {
            tracing::error!("statistics exports: {error:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_store::{HostStats, TeamStats, VolunteerStats};
    use std::io::Read;

    fn dump() -> StatsDump {
        let volunteer = |id: u64, name: &str, team_id, credit| VolunteerStats {
            id,
            name: name.into(),
            created_ms: 1_700_000_000_000,
            team_id,
            credit,
            recent_average_credit: credit / 2.0,
            rac_ms: 1_800_000_000_000,
        };
        StatsDump {
            volunteers: vec![
                volunteer(1, "ada <&> \"lovelace\"", Some(7), 12.5),
                volunteer(2, "grace", None, 3.0),
                volunteer(3, "idle", None, 0.0),
            ],
            teams: vec![TeamStats {
                id: 7,
                name: "engines & co".into(),
                created_ms: 1_700_000_000_000,
                founder_id: 1,
                founder_name: "ada <&> \"lovelace\"".into(),
                members: 1,
                credit: 12.5,
                recent_average_credit: 6.25,
                rac_ms: 1_800_000_000_000,
            }],
            hosts: vec![HostStats {
                id: 4,
                volunteer_id: 1,
                cores: 8,
                created_ms: 1_700_000_000_000,
                last_seen_ms: 1_799_000_000_000,
                credit: 12.5,
                recent_average_credit: 6.25,
                rac_ms: 1_800_000_000_000,
            }],
        }
    }

    /// The children of `node` that are elements, by name.
    fn children<'a>(node: roxmltree::Node<'a, 'a>) -> Vec<&'a str> {
        node.children()
            .filter(|c| c.is_element())
            .map(|c| c.tag_name().name())
            .collect()
    }

    fn text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> &'a str {
        node.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .unwrap_or_default()
    }

    /// Checked against the element names and order of BOINC's `sched/db_dump.cpp`
    /// (`write_user`, `write_team`, `write_host`, `tables_file`), parsed by a real XML parser.
    #[test]
    fn the_exports_have_boincs_structure_and_escape_names() {
        let project = PublicKey([3; 32]);
        let exports = render(&dump(), &project, 1_800_000_000_000);

        let tables = roxmltree::Document::parse(&exports.tables).expect("tables.xml parses");
        let root = tables.root_element();
        assert_eq!(root.tag_name().name(), "tables");
        assert_eq!(
            children(root),
            vec![
                "update_time",
                "nusers_total",
                "nteams_total",
                "nhosts_total",
                "total_credit",
                "applications"
            ]
        );
        assert_eq!(text(root, "update_time"), "1800000000");
        assert_eq!(
            text(root, "nusers_total"),
            "2",
            "only volunteers with credit"
        );
        assert_eq!(text(root, "total_credit"), "15.500000");

        let users = roxmltree::Document::parse(&exports.users).expect("users parse");
        let root = users.root_element();
        assert_eq!(root.tag_name().name(), "users");
        let listed: Vec<_> = root.children().filter(|c| c.is_element()).collect();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            children(listed[0]),
            vec![
                "id",
                "name",
                "create_time",
                "total_credit",
                "expavg_credit",
                "expavg_time",
                "cpid",
                "teamid"
            ]
        );
        assert_eq!(text(listed[0], "name"), "ada <&> \"lovelace\"");
        assert_eq!(text(listed[0], "total_credit"), "12.500000");
        assert_eq!(text(listed[0], "expavg_time"), "1800000000.000000");
        assert_eq!(text(listed[0], "cpid").len(), 32);
        assert_eq!(text(listed[0], "teamid"), "7");
        assert!(
            !children(listed[1]).contains(&"teamid"),
            "no team, no teamid"
        );

        let teams = roxmltree::Document::parse(&exports.teams).expect("teams parse");
        let team = teams.root_element().first_element_child().expect("a team");
        assert_eq!(teams.root_element().tag_name().name(), "teams");
        assert_eq!(
            &children(team)[..9],
            &[
                "id",
                "type",
                "name",
                "userid",
                "total_credit",
                "expavg_credit",
                "expavg_time",
                "founder_name",
                "create_time"
            ]
        );
        assert_eq!(text(team, "name"), "engines & co");

        let hosts = roxmltree::Document::parse(&exports.hosts).expect("hosts parse");
        let host = hosts.root_element().first_element_child().expect("a host");
        assert_eq!(hosts.root_element().tag_name().name(), "hosts");
        assert_eq!(
            &children(host)[..9],
            &[
                "id",
                "userid",
                "total_credit",
                "expavg_credit",
                "expavg_time",
                "p_vendor",
                "p_model",
                "os_name",
                "os_version"
            ]
        );
        assert_eq!(text(host, "ncpus"), "8");
    }

    #[test]
    fn the_files_are_written_whole_and_gzipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exports = render(&dump(), &PublicKey([3; 32]), 1_800_000_000_000);
        write(dir.path(), &exports).expect("write");
        for name in FILES {
            assert!(dir.path().join(name).is_file(), "{name}");
        }
        let mut users = String::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(dir.path().join("user.gz")).expect("open"),
        )
        .read_to_string(&mut users)
        .expect("gunzip");
        assert_eq!(users, exports.users);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files stay behind");
    }
}
