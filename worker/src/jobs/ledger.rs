//! The run ledger, for tests: every handler run is recorded as it starts (kind, job, attempt),
//! so tests of "effects once" count runs and duplicates instead of rows behind a unique
//! constraint. In-process tests give the registry a [`MemoryLedger`]; the chaos suite runs
//! worker processes with `JOB_RUN_LEDGER=<file>`, one line per run, appended with a single
//! write so that a worker killed with SIGKILL loses no line it wrote.

use std::io::Write as _;
use std::sync::Mutex;

/// One handler run of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub kind: String,
    pub job_id: i64,
    pub attempt: i32,
    /// When the handler began, in µs since the Unix epoch (the bench measures commit →
    /// handler start with it; the chaos suite places each run in a fault's window).
    pub started_at_us: i64,
}

/// Where runs are recorded.
pub trait RunLedger: Send + Sync {
    fn record(&self, run: Run);
}

/// Runs kept in memory.
#[derive(Debug, Default)]
pub struct MemoryLedger(Mutex<Vec<Run>>);

impl MemoryLedger {
    /// Every run so far, in the order they started.
    pub fn runs(&self) -> Vec<Run> {
        self.0.lock().expect("ledger lock poisoned").clone()
    }

    /// How many runs of `job_id` started.
    pub fn runs_of(&self, job_id: i64) -> usize {
        self.runs()
            .iter()
            .filter(|run| run.job_id == job_id)
            .count()
    }
}

impl RunLedger for MemoryLedger {
    fn record(&self, run: Run) {
        self.0.lock().expect("ledger lock poisoned").push(run);
    }
}

/// Runs appended to a file as lines `kind job_id attempt started_at_us`.
pub struct FileLedger(Mutex<std::fs::File>);

impl FileLedger {
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(FileLedger(Mutex::new(file)))
    }

    /// Reads a ledger file back; lines that do not parse (none should) are skipped.
    pub fn read(path: &std::path::Path) -> std::io::Result<Vec<Run>> {
        let text = std::fs::read_to_string(path)?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                Some(Run {
                    kind: fields.next()?.to_owned(),
                    job_id: fields.next()?.parse().ok()?,
                    attempt: fields.next()?.parse().ok()?,
                    started_at_us: fields.next()?.parse().ok()?,
                })
            })
            .collect())
    }
}

impl RunLedger for FileLedger {
    fn record(&self, run: Run) {
        let line = format!(
            "{} {} {} {}\n",
            run.kind, run.job_id, run.attempt, run.started_at_us
        );
        let mut file = self.0.lock().expect("ledger lock poisoned");
        if let Err(error) = file.write_all(line.as_bytes()) {
            tracing::error!(error = %error, "could not write the run ledger");
        }
    }
}
