//! `neurod sql`: SQL over the stored streams of a data directory, without a running daemon. A
//! query on the command line prints its result and exits; without one, a prompt reads queries
//! (ended by `;`) until end of input.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use neurod::sql::format::Format;
use neurod::sql::{SqlEngine, SqlLimits};

#[derive(clap::Args)]
pub struct Args {
    /// The data directory (or one store's directory) to query.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// How to print results: table, csv, json or arrow (an Arrow IPC stream).
    #[arg(long, default_value = "table")]
    format: Format,
    /// Most rows a result may have.
    #[arg(long, default_value_t = SqlLimits::default().max_rows)]
    max_rows: usize,
    /// The query; without one, an interactive prompt.
    query: Option<String>,
}

pub fn sql(args: Args) -> ExitCode {
    let limits = SqlLimits {
        max_rows: args.max_rows,
        ..SqlLimits::default()
    };
    let engine = match SqlEngine::new(args.data_dir.clone(), None, limits) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the query engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.data_dir.exists() {
        eprintln!("{}: no such directory", args.data_dir.display());
        return ExitCode::FAILURE;
    }
    match args.query {
        Some(q) => {
            if run_one(&engine, &q, args.format) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        None if std::io::stdin().is_terminal() => prompt(&engine, args.format),
        None => {
            let mut text = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                eprintln!("cannot read the query from standard input: {e}");
                return ExitCode::FAILURE;
            }
            let ok = statements(&text)
                .iter()
                .all(|q| run_one(&engine, q, args.format));
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs one query and prints its result; false (after printing why) if it failed.
fn run_one(engine: &SqlEngine, query: &str, format: Format) -> bool {
    let result = engine.block_on(engine.query(query));
    let written = result.and_then(|r| {
        format
            .write(&r.schema, &r.batches)
            .map_err(|e| neurod::sql::SqlError::Failed(e.to_string()))
    });
    match written {
        Ok(bytes) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes).and_then(|_| out.flush()).is_ok()
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

/// The `;`-separated statements of a text (a `;` inside quotes does not end one).
fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (None, ';') => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn prompt(engine: &SqlEngine, format: Format) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the prompt: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".neurod_sql_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "neurod sql on {}: end each query with `;`; `\\d` lists the tables; Ctrl-D quits.",
        engine.data_dir().display()
    );
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "neurod> "
        } else {
            "   ...> "
        };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(_) => break,
        };
        if pending.is_empty() && line.trim() == "\\d" {
            run_one(
                engine,
                "SELECT name, layout, kind, live, stored_rows FROM streams ORDER BY name",
                format,
            );
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let _ = editor.add_history_entry(pending.trim());
        for q in statements(&pending) {
            run_one(engine, &q, format);
        }
        pending.clear();
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn statements_split_on_semicolons_outside_quotes() {
        assert_eq!(
            statements("SELECT ';' AS a; SELECT \"x;y\" FROM t;\n  "),
            vec!["SELECT ';' AS a", "SELECT \"x;y\" FROM t"]
        );
    }
}
