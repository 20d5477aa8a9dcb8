//! `sockspan dump`: every span of a store as JSON lines on stdout.

use std::{
    io::{self, Write as _},
    path::Path,
};

use crate::store::{Store, StoreConfig};

/// Exit code: 0 when every span was written; 1 when the store cannot be read, a frame of it is
/// damaged (the spans of the others are still written), or stdout fails.
pub fn run(path: &Path) -> i32 {
    if !path.exists() {
        eprintln!("sockspan: no store at {}", path.display());
        return 1;
    }
    let store = match Store::open(StoreConfig::reading(path)) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("sockspan: {err}");
            return 1;
        }
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut write_error = None;
    let result = store.for_each_span(|json| {
        let written = out.write_all(json).and_then(|()| out.write_all(b"\n"));
        match written {
            Ok(()) => true,
            Err(err) => {
                write_error = Some(err);
                false
            }
        }
    });
    let flushed = out.flush();
    match (result, write_error.map_or(flushed, Err)) {
        (Ok(0), Ok(())) => 0,
        (Ok(damaged), Ok(())) => {
            eprintln!("sockspan: {damaged} damaged frames or spans of the store were skipped");
            1
        }
        (Err(err), _) => {
            eprintln!("sockspan: {err}");
            1
        }
        // A closed pipe (`| head`) is how a reader says it has enough.
        (Ok(_), Err(err)) if err.kind() == io::ErrorKind::BrokenPipe => 0,
        (Ok(_), Err(err)) => {
            eprintln!("sockspan: cannot write the spans: {err}");
            1
        }
    }
}
