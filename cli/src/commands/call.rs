//! `apx call`: one prompt through the local gateway, streamed to the terminal.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::client::{self, Client};
use crate::exit::{self, Failure, fail};
use crate::local::{self, Local};
use crate::sse;
use crate::ui;

pub const HELP: &str = "Examples:
  apx call openai \"Write a haiku about gateways\"
  apx call anthropic \"Explain SSE in one sentence\" --max-tokens 200
  apx call --model gpt-4o-mini --system \"Answer in French\" \"Hello\"
  echo \"Summarise this\" | apx call openai
  apx call openai \"Hi\" --json | jq .usage

The first word picks the API: `openai` (/v1/chat/completions) or `anthropic`
(/v1/messages), or a configured provider's name (its first model). Without
--model, the first configured model that speaks that API is used.
The gateway key is $APX_API_KEY, else client.key beside the config.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// OpenAI chat completions (`/v1/chat/completions`).
    Openai,
    /// Anthropic messages (`/v1/messages`).
    Anthropic,
}

#[derive(clap::Args)]
pub struct Args {
    /// `openai`, `anthropic` or a provider name, then the prompt (read from
    /// stdin when not given).
    #[arg(value_name = "[API] PROMPT")]
    words: Vec<String>,
    /// The model to ask (see `apx models`).
    #[arg(long, short)]
    model: Option<String>,
    /// A system prompt.
    #[arg(long, short)]
    system: Option<String>,
    /// Upper bound on the answer's length, in tokens (Anthropic: default 1024).
    #[arg(long, value_name = "N")]
    max_tokens: Option<u32>,
    /// Sampling temperature.
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,
    /// The API to call, when the first word does not say.
    #[arg(long, value_enum)]
    api: Option<Api>,
    /// Print the raw JSON response instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Wait for the whole answer instead of streaming it.
    #[arg(long)]
    no_stream: bool,
    /// The gateway's URL (default: from the config's `listen`).
    #[arg(long, env = "APX_URL", value_name = "URL")]
    url: Option<String>,
}

/// A configured model, as far as choosing one goes.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: String,
    pub provider: String,
    /// The provider's `kind` (`openai`, `anthropic`, `echo`, …).
    pub kind: String,
}

pub fn models_of(config: &apx_gateway::Config) -> Vec<ModelInfo> {
    config
        .models
        .iter()
        .filter_map(|m| {
            let provider = config.providers.get(m.provider)?;
            Some(ModelInfo {
                name: m.name.clone(),
                provider: provider.name.clone(),
                kind: provider.kind.name().to_string(),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct Target {
    api: Api,
    model: String,
    /// How many leading words were taken as the API or provider.
    consumed: usize,
}

fn api_of_kind(kind: &str) -> Api {
    if kind == "anthropic" {
        Api::Anthropic
    } else {
        Api::Openai
    }
}

/// Picks the API and model from the first word, `--model` and `--api`.
fn resolve(
    words: &[String],
    model: Option<&str>,
    api: Option<Api>,
    models: &[ModelInfo],
) -> Result<Target, String> {
    let first = words.first().map(String::as_str);
    let no_models =
        || "the config has no models: add one (`apx init --force`) or pass --model".to_string();
    let kind_of = |name: &str| {
        models
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.kind.as_str())
    };
    // 1. A configured provider's name: its first model, in its API.
    if let Some(word) = first {
        if let Some(first_model) = models.iter().find(|m| m.provider == word) {
            let model = model.map_or(first_model.name.clone(), str::to_string);
            let api = api.unwrap_or(api_of_kind(kind_of(&model).unwrap_or(&first_model.kind)));
            return Ok(Target {
                api,
                model,
                consumed: 1,
            });
        }
    }
    // 2. An API name: the first model whose provider speaks it, else the
    //    built-in echo model (which speaks both), else the first model.
    let named_api = match first {
        Some("openai") => Some(Api::Openai),
        Some("anthropic") => Some(Api::Anthropic),
        _ => None,
    };
    if let Some(named) = named_api {
        let api = api.unwrap_or(named);
        let model = match model {
            Some(model) => model.to_string(),
            None => models
                .iter()
                .find(|m| api_of_kind(&m.kind) == api && m.kind != "echo")
                .or_else(|| models.iter().find(|m| m.kind == "echo"))
                .or_else(|| models.first())
                .map(|m| m.name.clone())
                .ok_or_else(no_models)?,
        };
        return Ok(Target {
            api,
            model,
            consumed: 1,
        });
    }
    // 3. Only a prompt: --model or the first model, in the model's API.
    let model = match model {
        Some(model) => model.to_string(),
        None => models
            .first()
            .map(|m| m.name.clone())
            .ok_or_else(no_models)?,
    };
    let api = api.unwrap_or_else(|| kind_of(&model).map_or(Api::Openai, api_of_kind));
    Ok(Target {
        api,
        model,
        consumed: 0,
    })
}

fn read_prompt(words: &[String]) -> anyhow::Result<String> {
    if !words.is_empty() {
        return Ok(words.join(" "));
    }
    if std::io::stdin().is_terminal() {
        return Err(Failure::new(exit::USAGE, "no prompt given")
            .hint("give it as an argument (`apx call openai \"Hello\"`) or pipe it on stdin")
            .into());
    }
    let mut prompt = String::new();
    std::io::stdin()
        .read_to_string(&mut prompt)
        .context("cannot read the prompt from stdin")?;
    let prompt = prompt.trim().to_string();
    if prompt.is_empty() {
        return Err(fail(exit::USAGE, "the prompt on stdin is empty"));
    }
    Ok(prompt)
}

fn request_body(args: &Args, target: &Target, prompt: &str, stream: bool) -> Value {
    match target.api {
        Api::Openai => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": prompt}));
            let mut body = json!({"model": target.model, "messages": messages, "stream": stream});
            if let Some(max) = args.max_tokens {
                body["max_tokens"] = json!(max);
            }
            if let Some(t) = args.temperature {
                body["temperature"] = json!(t);
            }
            body
        }
        Api::Anthropic => {
            let mut body = json!({
                "model": target.model,
                "max_tokens": args.max_tokens.unwrap_or(1024),
                "messages": [{"role": "user", "content": prompt}],
                "stream": stream,
            });
            if let Some(system) = &args.system {
                body["system"] = json!(system);
            }
            if let Some(t) = args.temperature {
                body["temperature"] = json!(t);
            }
            body
        }
    }
}

pub fn run(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let local = Local::discover(config_path)?;
    // Without a config, `--url` and `--model` are enough.
    let config = match (&args.url, &args.model) {
        (Some(_), Some(_)) => local.config_lenient().ok(),
        _ => Some(local.config_lenient()?),
    };
    let models = config.as_ref().map(models_of).unwrap_or_default();
    let target = resolve(&args.words, args.model.as_deref(), args.api, &models)
        .map_err(|m| fail(exit::USAGE, m))?;
    let prompt = read_prompt(&args.words[target.consumed..])?;
    let addr = match (&args.url, &config) {
        (Some(url), _) => local::parse_http_url(url)?,
        (None, Some(config)) => local::gateway_addr(config.listen)?,
        (None, None) => return Err(fail(exit::USAGE, "no gateway address: pass --url")),
    };
    let key = local.client_key()?.ok_or_else(|| {
        Failure::new(exit::KEY_REFUSED, "no gateway key for the CLI").hint(format!(
            "set APX_API_KEY, or put a key from `apx keys create --name me` in {}",
            local.files.client_key.display()
        ))
    })?;
    let client = Client::new(addr, Some(key));
    let stream = !args.json && !args.no_stream;
    let body = request_body(&args, &target, &prompt, stream);
    let model_names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(send(&client, &args, &target, body, stream, &model_names))
}

async fn send(
    client: &Client,
    args: &Args,
    target: &Target,
    body: Value,
    stream: bool,
    models: &[String],
) -> anyhow::Result<()> {
    let path = match target.api {
        Api::Openai => "/v1/chat/completions",
        Api::Anthropic => "/v1/messages",
    };
    let headers = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        (
            "accept",
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        ),
    ];
    let started = Instant::now();
    let response = client
        .send(
            Method::POST,
            path,
            &headers,
            Some(serde_json::to_vec(&body)?),
        )
        .await?;
    let status = response.status();
    if args.json {
        let bytes = client::read_body(response).await?;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        if !bytes.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return check_status(status, &bytes, models);
    }
    if status != StatusCode::OK {
        let bytes = client::read_body(response).await?;
        return check_status(status, &bytes, models);
    }
    let mut printer = Printer::default();
    if stream {
        let mut parser = sse::Parser::default();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                fail(exit::REQUEST_FAILED, format!("the stream broke off: {err}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for event in parser.push(&data) {
                if printer.event(target.api, &event)? {
                    break;
                }
            }
        }
        if let Some(event) = parser.finish() {
            printer.event(target.api, &event)?;
        }
    } else {
        let bytes = client::read_body(response).await?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|_| fail(exit::REQUEST_FAILED, "the gateway's answer is not JSON"))?;
        printer.whole(target.api, &json)?;
    }
    printer.finish(&target.model, started)
}

fn check_status(status: StatusCode, body: &[u8], models: &[String]) -> anyhow::Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        Err(client::answer_failure(status, body, models).into())
    }
}

/// Writes the answer's text as it arrives and remembers the usage.
#[derive(Default)]
struct Printer {
    printed: bool,
    ends_with_newline: bool,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    stop_reason: Option<String>,
}

impl Printer {
    fn text(&mut self, text: &str) -> anyhow::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        self.printed = true;
        self.ends_with_newline = text.ends_with('\n');
        Ok(())
    }

    /// Handles one streamed event; `true` when the stream is complete.
    fn event(&mut self, api: Api, event: &sse::Event) -> anyhow::Result<bool> {
        if event.data == "[DONE]" {
            return Ok(true);
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return Ok(false);
        };
        if event.name == "error" || data.get("error").is_some() {
            let message = client::error_message(&data).unwrap_or_else(|| event.data.clone());
            self.end_line()?;
            return Err(fail(
                exit::REQUEST_FAILED,
                format!("the answer broke off: {message}"),
            ));
        }
        match api {
            Api::Openai => {
                if let Some(choice) = data.pointer("/choices/0") {
                    if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str) {
                        self.text(text)?;
                    }
                    if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                        self.stop_reason = Some(reason.to_string());
                    }
                }
                self.usage_openai(&data);
            }
            Api::Anthropic => match data.get("type").and_then(Value::as_str) {
                Some("content_block_delta") => {
                    if let Some(text) = data.pointer("/delta/text").and_then(Value::as_str) {
                        self.text(text)?;
                    }
                }
                Some("message_start") => {
                    self.input_tokens = data
                        .pointer("/message/usage/input_tokens")
                        .and_then(Value::as_u64);
                }
                Some("message_delta") => {
                    if let Some(out) = data.pointer("/usage/output_tokens").and_then(Value::as_u64)
                    {
                        self.output_tokens = Some(out);
                    }
                    if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str)
                    {
                        self.stop_reason = Some(reason.to_string());
                    }
                }
                Some("message_stop") => return Ok(true),
                _ => {}
            },
        }
        Ok(false)
    }

    fn usage_openai(&mut self, data: &Value) {
        if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = usage.get("prompt_tokens").and_then(Value::as_u64);
            self.output_tokens = usage.get("completion_tokens").and_then(Value::as_u64);
        }
    }

    /// A whole (non-streamed) answer.
    fn whole(&mut self, api: Api, data: &Value) -> anyhow::Result<()> {
        match api {
            Api::Openai => {
                let text = data
                    .pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.text(&text)?;
                self.usage_openai(data);
            }
            Api::Anthropic => {
                let text: String = data
                    .get("content")
                    .and_then(Value::as_array)
                    .map(|blocks| {
                        blocks
                            .iter()
                            .filter_map(|b| b.get("text").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                self.text(&text)?;
                self.input_tokens = data.pointer("/usage/input_tokens").and_then(Value::as_u64);
                self.output_tokens = data.pointer("/usage/output_tokens").and_then(Value::as_u64);
            }
        }
        Ok(())
    }

    fn end_line(&mut self) -> anyhow::Result<()> {
        if self.printed && !self.ends_with_newline {
            let mut out = std::io::stdout().lock();
            out.write_all(b"\n")?;
            out.flush()?;
            self.ends_with_newline = true;
        }
        Ok(())
    }

    fn finish(mut self, model: &str, started: Instant) -> anyhow::Result<()> {
        self.end_line()?;
        if !self.printed {
            eprintln!("{}", ui::err_dim("(the model returned no text)"));
        }
        if ui::stderr_is_tty() {
            let mut parts = vec![model.to_string()];
            if let (Some(i), Some(o)) = (self.input_tokens, self.output_tokens) {
                parts.push(format!("{i} in / {o} out tokens"));
            }
            if let Some(reason) = &self.stop_reason {
                parts.push(reason.clone());
            }
            parts.push(format!("{:.1}s", started.elapsed().as_secs_f64()));
            eprintln!("{}", ui::err_dim(&format!("— {}", parts.join(" · "))));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Vec<ModelInfo> {
        let m = |name: &str, provider: &str, kind: &str| ModelInfo {
            name: name.to_string(),
            provider: provider.to_string(),
            kind: kind.to_string(),
        };
        vec![
            m("echo", "echo", "echo"),
            m("gpt-4o-mini", "openai", "openai"),
            m("claude-sonnet-4-5", "anthropic", "anthropic"),
            m("llama", "groq", "openai"),
        ]
    }

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn first_word_picks_api_and_model() {
        let m = models();
        let t = resolve(&words("openai hi"), None, None, &m).unwrap();
        assert_eq!(
            (t.api, t.model.as_str(), t.consumed),
            (Api::Openai, "gpt-4o-mini", 1)
        );
        let t = resolve(&words("anthropic hi"), None, None, &m).unwrap();
        assert_eq!(
            (t.api, t.model.as_str()),
            (Api::Anthropic, "claude-sonnet-4-5")
        );
        let t = resolve(&words("groq hi"), None, None, &m).unwrap();
        assert_eq!((t.api, t.model.as_str()), (Api::Openai, "llama"));
        let t = resolve(&words("hello there"), None, None, &m).unwrap();
        assert_eq!(
            (t.api, t.model.as_str(), t.consumed),
            (Api::Openai, "echo", 0)
        );
        let t = resolve(&words("hello"), Some("claude-sonnet-4-5"), None, &m).unwrap();
        assert_eq!(t.api, Api::Anthropic);
    }

    #[test]
    fn echo_answers_either_api_when_nothing_else_does() {
        let only_echo = vec![models().remove(0)];
        let t = resolve(&words("anthropic hi"), None, None, &only_echo).unwrap();
        assert_eq!((t.api, t.model.as_str()), (Api::Anthropic, "echo"));
        let t = resolve(&words("openai hi"), None, None, &only_echo).unwrap();
        assert_eq!((t.api, t.model.as_str()), (Api::Openai, "echo"));
        assert!(resolve(&words("openai hi"), None, None, &[]).is_err());
        let t = resolve(&words("openai hi"), Some("x"), None, &[]).unwrap();
        assert_eq!(t.model, "x");
    }

    #[test]
    fn request_bodies_follow_each_api() {
        let args = Args {
            words: Vec::new(),
            model: None,
            system: Some("be brief".to_string()),
            max_tokens: Some(50),
            temperature: None,
            api: None,
            json: false,
            no_stream: false,
            url: None,
        };
        let openai = Target {
            api: Api::Openai,
            model: "m".to_string(),
            consumed: 0,
        };
        let body = request_body(&args, &openai, "hi", true);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "hi");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["stream"], true);
        let anthropic = Target {
            api: Api::Anthropic,
            ..openai
        };
        let body = request_body(&args, &anthropic, "hi", false);
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["stream"], false);
    }

    #[test]
    fn printer_collects_usage_from_both_streams() {
        let mut p = Printer::default();
        let ev = |name: &str, data: &str| sse::Event {
            name: name.to_string(),
            data: data.to_string(),
        };
        assert!(
            !p.event(
                Api::Anthropic,
                &ev(
                    "message_start",
                    r#"{"type":"message_start","message":{"usage":{"input_tokens":3}}}"#
                )
            )
            .unwrap()
        );
        assert!(!p.event(Api::Anthropic, &ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#)).unwrap());
        assert!(
            p.event(
                Api::Anthropic,
                &ev("message_stop", r#"{"type":"message_stop"}"#)
            )
            .unwrap()
        );
        assert_eq!((p.input_tokens, p.output_tokens), (Some(3), Some(7)));
        assert_eq!(p.stop_reason.as_deref(), Some("end_turn"));
        let mut p = Printer::default();
        assert!(p.event(Api::Openai, &ev("", "[DONE]")).unwrap());
        let err = p
            .event(
                Api::Openai,
                &ev("", r#"{"error":{"message":"upstream died"}}"#),
            )
            .unwrap_err();
        assert!(err.to_string().contains("upstream died"));
    }
}
