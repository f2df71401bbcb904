//! Leaderboards and volunteer pages for dashboards, computed from the statistics dump (pure:
//! the dump in, JSON out). Ranks count from 1; ties keep id order, so pages are stable.

use herd_store::{HostStats, StatsDump, TeamStats, VolunteerStats};
use std::collections::HashMap;

use serde_json::{Value, json};

/// Which leaderboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Board {
    Volunteers,
    Teams,
    Hosts,
}

impl Board {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "volunteers" => Some(Self::Volunteers),
            "teams" => Some(Self::Teams),
            "hosts" => Some(Self::Hosts),
            _ => None,
        }
    }
}

/// What a leaderboard is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SortBy {
    /// Total credit.
    Credit,
    /// Recent average credit.
    Recent,
}

impl SortBy {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "credit" => Some(Self::Credit),
            "recent" => Some(Self::Recent),
            _ => None,
        }
    }
}

/// Lookups a board needs, built once per request: without them every line would scan the
/// whole dump (volunteers x hosts for the volunteer board).
struct Index<'a> {
    team_names: HashMap<u64, &'a str>,
    volunteer_names: HashMap<u64, &'a str>,
    hosts_per_volunteer: HashMap<u64, usize>,
}

impl<'a> Index<'a> {
    fn new(dump: &'a StatsDump) -> Self {
        let mut hosts_per_volunteer = HashMap::new();
        for host in &dump.hosts {
            *hosts_per_volunteer.entry(host.volunteer_id).or_insert(0) += 1;
        }
        Self {
            team_names: dump.teams.iter().map(|t| (t.id, t.name.as_str())).collect(),
            volunteer_names: dump
                .volunteers
                .iter()
                .map(|v| (v.id, v.name.as_str()))
                .collect(),
            hosts_per_volunteer,
        }
    }
}

fn show_volunteer(v: &VolunteerStats, index: &Index<'_>) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "team": v.team_id.and_then(|id| index.team_names.get(&id)),
        "credit": v.credit,
        "recent_average_credit": v.recent_average_credit,
        "hosts": index.hosts_per_volunteer.get(&v.id).copied().unwrap_or(0),
    })
}

fn show_team(t: &TeamStats) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "members": t.members,
        "founder": t.founder_name,
        "credit": t.credit,
        "recent_average_credit": t.recent_average_credit,
    })
}

fn show_host(h: &HostStats, index: &Index<'_>) -> Value {
    json!({
        "id": h.id,
        "volunteer": index.volunteer_names.get(&h.volunteer_id),
        "cores": h.cores,
        "last_seen_ms": h.last_seen_ms,
        "credit": h.credit,
        "recent_average_credit": h.recent_average_credit,
    })
}

/// The order of a board: positions into its list, best first; ties keep id order.
fn ranking(figures: impl Iterator<Item = (u64, f64, f64)>, sort: SortBy) -> Vec<usize> {
    let figures: Vec<(u64, f64, f64)> = figures.collect();
    let key = |i: &usize| match sort {
        SortBy::Credit => figures[*i].1,
        SortBy::Recent => figures[*i].2,
    };
    let mut order: Vec<usize> = (0..figures.len()).collect();
    order.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then(figures[*a].0.cmp(&figures[*b].0))
    });
    order
}

/// One page of a leaderboard: `{"board", "sort", "total", "offset", "entries": [{"rank", ...}]}`.
/// Only the entries of the page are rendered.
pub(crate) fn page(dump: &StatsDump, board: Board, sort: SortBy, offset: u64, limit: u64) -> Value {
    let index = Index::new(dump);
    let (order, show): (Vec<usize>, Box<dyn Fn(usize) -> Value + '_>) = match board {
        Board::Volunteers => (
            ranking(
                dump.volunteers
                    .iter()
                    .map(|v| (v.id, v.credit, v.recent_average_credit)),
                sort,
            ),
            Box::new(|i| show_volunteer(&dump.volunteers[i], &index)),
        ),
        Board::Teams => (
            ranking(
                dump.teams
                    .iter()
                    .map(|t| (t.id, t.credit, t.recent_average_credit)),
                sort,
            ),
            Box::new(|i| show_team(&dump.teams[i])),
        ),
        Board::Hosts => (
            ranking(
                dump.hosts
                    .iter()
                    .map(|h| (h.id, h.credit, h.recent_average_credit)),
                sort,
            ),
            Box::new(|i| show_host(&dump.hosts[i], &index)),
        ),
    };
    let total = order.len() as u64;
    let entries: Vec<Value> = order
        .into_iter()
        .enumerate()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|(rank, position)| {
            let mut shown = show(position);
            shown["rank"] = json!(rank + 1);
            shown
        })
        .collect();
    json!({
        "board": match board {
            Board::Volunteers => "volunteers",
            Board::Teams => "teams",
            Board::Hosts => "hosts",
        },
        "sort": match sort {
            SortBy::Credit => "credit",
            SortBy::Recent => "recent",
        },
        "total": total,
        "offset": offset,
        "entries": entries,
    })
}

/// A volunteer's page: their figures, rank by credit, team and hosts; `None` if unknown.
pub(crate) fn volunteer(dump: &StatsDump, name: &str) -> Option<Value> {
    let position = dump.volunteers.iter().position(|v| v.name == name)?;
    let found = &dump.volunteers[position];
    let index = Index::new(dump);
    let order = ranking(
        dump.volunteers
            .iter()
            .map(|v| (v.id, v.credit, v.recent_average_credit)),
        SortBy::Credit,
    );
    let rank = order.iter().position(|i| *i == position)? + 1;
    let mut shown = show_volunteer(found, &index);
    shown["rank"] = json!(rank);
    shown["volunteers"] = json!(dump.volunteers.len());
    shown["created_ms"] = json!(found.created_ms);
    shown["hosts"] = Value::Array(
        dump.hosts
            .iter()
            .filter(|h| h.volunteer_id == found.id)
            .map(|h| show_host(h, &index))
            .collect(),
    );
    Some(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> StatsDump {
        let volunteer = |id, name: &str, team_id, credit, recent| VolunteerStats {
            id,
            name: name.into(),
            created_ms: 0,
            team_id,
            credit,
            recent_average_credit: recent,
            rac_ms: 0,
        };
        let host = |id, volunteer_id, credit| HostStats {
            id,
            volunteer_id,
            cores: 4,
            created_ms: 0,
            last_seen_ms: 0,
            credit,
            recent_average_credit: credit,
            rac_ms: 0,
        };
        StatsDump {
            volunteers: vec![
                volunteer(1, "ada", Some(9), 5.0, 1.0),
                volunteer(2, "grace", None, 8.0, 0.5),
                volunteer(3, "alan", Some(9), 5.0, 3.0),
            ],
            teams: vec![TeamStats {
                id: 9,
                name: "engines".into(),
                created_ms: 0,
                founder_id: 1,
                founder_name: "ada".into(),
                members: 2,
                credit: 10.0,
                recent_average_credit: 4.0,
                rac_ms: 0,
            }],
            hosts: vec![host(1, 1, 2.0), host(2, 1, 3.0), host(3, 2, 8.0)],
        }
    }

    fn names(page: &Value, field: &str) -> Vec<String> {
        page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e[field].to_string().trim_matches('"').to_string())
            .collect()
    }

    #[test]
    fn boards_sort_rank_and_page() {
        let dump = dump();
        let by_credit = page(&dump, Board::Volunteers, SortBy::Credit, 0, 10);
        // Ties (ada and alan, 5.0) keep id order.
        assert_eq!(names(&by_credit, "name"), ["grace", "ada", "alan"]);
        assert_eq!(names(&by_credit, "rank"), ["1", "2", "3"]);
        assert_eq!(by_credit["entries"][1]["team"], "engines");
        assert_eq!(by_credit["entries"][1]["hosts"], 2);
        let recent = page(&dump, Board::Volunteers, SortBy::Recent, 1, 1);
        assert_eq!(names(&recent, "name"), ["ada"]);
        assert_eq!(recent["entries"][0]["rank"], 2);
        assert_eq!(recent["total"], 3);
        let beyond = page(&dump, Board::Volunteers, SortBy::Credit, 10, 10);
        assert_eq!(beyond["entries"].as_array().map(Vec::len), Some(0));
        let hosts = page(&dump, Board::Hosts, SortBy::Credit, 0, 10);
        assert_eq!(names(&hosts, "id"), ["3", "2", "1"]);
        assert_eq!(hosts["entries"][0]["volunteer"], "grace");
        let teams = page(&dump, Board::Teams, SortBy::Credit, 0, 10);
        assert_eq!(names(&teams, "name"), ["engines"]);
    }

    #[test]
    fn a_volunteer_page_has_rank_team_and_hosts() {
        let dump = dump();
        let ada = volunteer(&dump, "ada").expect("ada");
        assert_eq!(
            (ada["rank"].as_u64(), ada["volunteers"].as_u64()),
            (Some(2), Some(3))
        );
        assert_eq!(ada["team"], "engines");
        assert_eq!(ada["hosts"].as_array().map(Vec::len), Some(2));
        assert!(volunteer(&dump, "nobody").is_none());
    }
}
