//! The throw-away PostgreSQL cluster of `tests/common/postgres.rs`, which the PostgreSQL tests
//! stand on: it answers a query, stops and starts again on the same port with its data kept, and
//! leaves nothing on disk once dropped. Two clusters started at once share nothing.

mod common;

use common::postgres::Postgres;

#[test]
fn a_cluster_answers_restarts_with_its_data_and_is_removed_when_dropped() {
    let postgres = Postgres::start();
    assert_eq!(postgres.psql("select 1").trim(), "1");
    postgres.psql("create table kept (n int); insert into kept values (42)");

    postgres.stop();
    let data = postgres.data_dir();
    assert!(
        !data.join("postmaster.pid").exists(),
        "the server still runs after stop"
    );
    postgres.start_again();
    assert_eq!(postgres.psql("select n from kept").trim(), "42");

    drop(postgres);
    assert!(!data.exists(), "{} is left after drop", data.display());
}

#[test]
fn clusters_started_at_once_share_nothing() {
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(Postgres::start);
        let second = scope.spawn(Postgres::start);
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_ne!(first.url(), second.url());
    assert_ne!(first.data_dir(), second.data_dir());
    first.psql("create table only_in_first ()");
    let in_second = "select count(*) from pg_class where relname = 'only_in_first'";
    assert_eq!(second.psql(in_second).trim(), "0");
}
