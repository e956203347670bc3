//! Reading the L1 console protocol (`@@ KIND key=value ...` lines) and judging a run against
//! its plan: every planned result must come, with the expected status.

use std::collections::BTreeMap;

use super::emulator::Line;

/// One `@@` line: its kind (`HV`, `BEGIN`, `RESULT`, ...), fields, and host time.
#[derive(Clone, Debug)]
pub struct Record {
    /// `HV`, `BEGIN`, `RESULT`, `L1`, `DONE`, `SUITE`, `NOTE`.
    pub kind: String,
    /// `key=value` fields; a value may be `"quoted with spaces"`.
    pub fields: BTreeMap<String, String>,
    /// Host seconds since the emulator started.
    pub t: f64,
}

impl Record {
    /// The field `key`, or "".
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Parse an `@@` line (anywhere in the line: the kernel may prefix console output).
pub fn parse(line: &Line) -> Option<Record> {
    let at = line.text.find("@@ ")?;
    let rest = &line.text[at + 3..];
    let (kind, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut fields = BTreeMap::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].to_string();
        let after = &rest[eq + 1..];
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(e) => (&q[..e], &q[e + 1..]),
                None => (q, ""),
            }
        } else {
            after.split_once(' ').unwrap_or((after, ""))
        };
        fields.insert(key, val.to_string());
        rest = next;
    }
    Some(Record { kind: kind.to_string(), fields, t: line.t })
}

/// Status of one planned item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Ran and passed.
    Pass,
    /// Could not run: the loaded kernel has no backend to run guests (okvm before its backends).
    Unsupported,
    /// Failed, hung, crashed or never reported.
    Fail,
}

impl Status {
    /// Parse the `status=` field of a RESULT line.
    pub fn parse(s: &str) -> Status {
        match s {
            "PASS" => Status::Pass,
            "UNSUPPORTED" => Status::Unsupported,
            _ => Status::Fail,
        }
    }
}

/// The outcome of one planned item (`hv/name`).
#[derive(Debug)]
pub struct Outcome {
    /// Hypervisor tag (`linux`, `okvm`).
    pub hv: String,
    /// `load`, a kvmsuite test name, or an L2 workload.
    pub name: String,
    /// What happened.
    pub status: Status,
    /// What was expected (from the expectation file; PASS when not listed).
    pub expected: Status,
    /// Host seconds between BEGIN and RESULT, when both came.
    pub host_secs: Option<f64>,
    /// The RESULT's fields (metrics, msg).
    pub fields: BTreeMap<String, String>,
}

impl Outcome {
    /// Did it do at least as well as expected?
    pub fn ok(&self) -> bool {
        self.status <= self.expected
    }
}

/// Judge the records against the plan: for each hypervisor, its load line and one RESULT per
/// planned name. `expect(hv, name)` gives the expected status. `linux_params` must all appear
/// in the Linux KVM load line.
pub fn judge(
    records: &[Record],
    hvs: &[&str],
    names: &[String],
    linux_params: &[&str],
    expect: &dyn Fn(&str, &str) -> Status,
    tail: &str,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    for hv in hvs {
        let load = records.iter().find(|r| r.kind == "HV" && r.get("hv") == *hv);
        let mut fields = load.map(|r| r.fields.clone()).unwrap_or_default();
        let mut status = match load {
            Some(r) => Status::parse(r.get("status")),
            None => {
                fields.insert("msg".into(), format!("no load line; console ended with: {tail}"));
                Status::Fail
            }
        };
        if *hv == "linux" && status == Status::Pass {
            let line = load.map(|r| format!("{:?}", r.fields)).unwrap_or_default();
            for p in linux_params {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                if load.map(|r| r.get(k)) != Some(v) {
                    status = Status::Fail;
                    fields.insert("msg".into(), format!("platform check {p} failed: {line}"));
                }
            }
        }
        fields.remove("hv");
        fields.remove("status");
        let loaded = status == Status::Pass;
        out.push(Outcome {
            hv: hv.to_string(),
            name: "load".into(),
            status,
            expected: Status::Pass,
            host_secs: None,
            fields,
        });
        for name in names {
            let begin = records.iter().find(|r| r.kind == "BEGIN" && r.get("hv") == *hv && r.get("name") == name);
            let result = records.iter().find(|r| r.kind == "RESULT" && r.get("hv") == *hv && r.get("name") == name);
            let (status, mut fields) = match result {
                Some(r) => (Status::parse(r.get("status")), r.fields.clone()),
                None => {
                    let mut f = BTreeMap::new();
                    let why = if !loaded {
                        "not run: the hypervisor did not load".to_string()
                    } else if begin.is_some() {
                        format!("started but never finished; console ended with: {tail}")
                    } else {
                        format!("never started; console ended with: {tail}")
                    };
                    f.insert("msg".into(), why);
                    (Status::Fail, f)
                }
            };
            fields.remove("hv");
            fields.remove("name");
            fields.remove("status");
            let host_secs = match (begin, result) {
                (Some(b), Some(r)) => Some(r.t - b.t),
                _ => None,
            };
            out.push(Outcome {
                hv: hv.to_string(),
                name: name.clone(),
                status,
                expected: expect(hv, name),
                host_secs,
                fields,
            });
        }
    }
    out
}

/// One line per outcome: `PASS case hv/name (host s) metrics` or `FAIL ...: msg`.
pub fn format_outcome(case: &str, o: &Outcome) -> String {
    let verdict = match (o.ok(), o.status) {
        (true, Status::Pass) if o.expected != Status::Pass => "PASS (better than expected: update the expectation file)",
        (true, Status::Pass) => "PASS",
        (true, Status::Fail) => "PASS (expected failure)",
        (true, _) => "PASS (expected unsupported)",
        (false, _) => "FAIL",
    };
    let mut s = format!("{verdict} {case} {}/{}", o.hv, o.name);
    if let Some(h) = o.host_secs {
        s.push_str(&format!(" [{h:.2} s host]"));
    }
    for (k, v) in &o.fields {
        if k != "msg" {
            s.push_str(&format!(" {k}={v}"));
        }
    }
    if let Some(m) = o.fields.get("msg") {
        s.push_str(&format!(" : {m}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: f64, s: &str) -> Line {
        Line { t, text: s.to_string() }
    }

    #[test]
    fn parses_fields_and_quotes() {
        let r = parse(&line(1.0, "[  3.1] @@ RESULT hv=linux name=mmio status=FAIL secs=1.5 msg=\"a b=c\" x=1"))
            .expect("record");
        assert_eq!(r.kind, "RESULT");
        assert_eq!(r.get("msg"), "a b=c");
        assert_eq!(r.get("x"), "1");
        assert_eq!(r.get("secs"), "1.5");
        assert!(parse(&line(0.0, "no marker here")).is_none());
    }

    #[test]
    fn missing_results_fail_and_expectations_apply() {
        let recs: Vec<Record> = [
            "@@ HV hv=linux status=PASS npt=Y",
            "@@ BEGIN hv=linux name=a",
            "@@ RESULT hv=linux name=a status=PASS us=3",
            "@@ BEGIN hv=linux name=b",
            "@@ HV hv=okvm status=PASS",
            "@@ RESULT hv=okvm name=a status=UNSUPPORTED msg=\"KVM_RUN unsupported\"",
            "@@ RESULT hv=okvm name=b status=FAIL",
        ]
        .iter()
        .enumerate()
        .filter_map(|(i, s)| parse(&line(i as f64, s)))
        .collect();
        let names = vec!["a".to_string(), "b".to_string()];
        let expect = |hv: &str, _n: &str| if hv == "okvm" { Status::Unsupported } else { Status::Pass };
        let o = judge(&recs, &["linux", "okvm"], &names, &["npt=Y"], &expect, "tail");
        let v: Vec<(String, bool)> = o.iter().map(|o| (format!("{}/{}", o.hv, o.name), o.ok())).collect();
        assert_eq!(
            v,
            vec![
                ("linux/load".into(), true),
                ("linux/a".into(), true),
                ("linux/b".into(), false), // began, never finished
                ("okvm/load".into(), true),
                ("okvm/a".into(), true), // unsupported as expected
                ("okvm/b".into(), false), // FAIL is worse than expected
            ]
        );
        assert_eq!(o[1].host_secs, Some(1.0));
        // a platform mismatch fails the load
        let o = judge(&recs, &["linux"], &names, &["npt=N"], &expect, "tail");
        assert!(!o[0].ok());
    }
}
