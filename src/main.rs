//! `reviews-api`: serve (default), migrate, print-schema, token.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use reviews_api::config::{AppEnv, Cli, Command, Limits};
use reviews_api::graphql;
use reviews_service::{shutdown, telemetry};

/// mimalloc instead of glibc's malloc: a GraphQL request allocates many small, short-lived
/// values, and glibc's malloc/free took ~12% of the API's CPU under the page-query load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    reviews_service::exit_with(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Migrate { db, log }) => {
            telemetry::init(log.log_format);
            let (mut client, connection) = db.targets()?.session.connect().await.context(
                "while connecting to Postgres (DATABASE_DIRECT_URL, DATABASE_URL or DB_*)",
            )?;
            tokio::spawn(connection);
            let report = reviews_db::migrate::run_migrations(&mut client).await?;
            if report.applied.is_empty() {
                println!("migrations: up to date");
            }
            for name in report.applied {
                println!("migrations: applied {name}");
            }
            Ok(())
        }
        Some(Command::PrintSchema) => {
            let db = reviews_db::Db::connect_lazy(
                reviews_db::PgTarget::plaintext(tokio_postgres::Config::new()),
                1,
                reviews_db::PoolMode::Session,
            );
            let live = reviews_api::live::LiveFeed::idle();
            let guards = reviews_api::graphql::guards::Guards {
                limits: Limits::default(),
                app_env: AppEnv::Development,
                clients: reviews_api::rate_limit::ClientLimits::new(0, 0, 0),
                db: db.clone(),
            };
            let schema = graphql::build_schema(db, live, std::sync::Arc::new(guards));
            print!("{}", schema.sdl());
            Ok(())
        }
        Some(Command::Token(args)) => {
            let keys = args.auth.token_keys(args.app_env)?;
            println!(
                "{}",
                keys.mint(&args.sub, args.role, Duration::from_secs(args.ttl_secs))?
            );
            Ok(())
        }
    }
}

async fn serve(args: reviews_api::config::ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log.log_format);
    let server = reviews_api::run(&args, shutdown::signal("draining requests")).await?;
    server.task.await?;
    tracing::info!("stopped");
    Ok(())
}
