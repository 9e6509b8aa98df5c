//! The `oauth-token-operator` binary: parses the command line and hands over
//! to the library. See `cli` for the subcommands and flags.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    oauth_token_operator::tls::install_crypto_provider();
    let cli = oauth_token_operator::cli::parse();
    match oauth_token_operator::cli::execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(error.exit_code())
        }
    }
}
