// `ftune serve --model BASE [--adapter NAME=DIR]... [--host H] [--port P]`: an OpenAI-compatible
// HTTP server over one base model and several LoRA adapters, on the CPU or the GPU (src/infer/ holds the
// engine, the routes and the listener). SIGINT or SIGTERM stops it cleanly.
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "cli/commands.h"
#include "cli/decoder_choice.h"
#include "core/error.h"
#include "infer/api.h"
#include "infer/engine.h"
#include "infer/server.h"
#include "io/checkpoint.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"
#include "train/stop_signal.h"

namespace ftune {

namespace {

struct Args {
  std::string model, name, host = "127.0.0.1", chat = "auto";
  std::vector<std::string> adapters;
  int port = 8000;
  EngineOptions engine;
  DecoderChoice dec;
};

std::vector<AdapterSource> parse_adapters(const std::vector<std::string>& specs, const std::string& base_name) {
  std::vector<AdapterSource> out;
  std::set<std::string> names;
  for (const std::string& s : specs) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == s.size()) fail("--adapter: expected NAME=DIR, got '{}'", s);
    AdapterSource a{s.substr(0, eq), s.substr(eq + 1)};
    if (!names.insert(a.name).second) fail("--adapter: the name '{}' is given twice", a.name);
    if (a.name == base_name) fail("--adapter: the name '{}' is the base model's (--name)", a.name);
    out.push_back(std::move(a));
  }
  return out;
}

void run(const Args& a) {
  const std::string name = a.name.empty() ? a.model : a.name;
  const std::vector<AdapterSource> adapters = parse_adapters(a.adapters, name);
  if (a.chat != "auto" && a.chat != "llama2" && a.chat != "llama3" && a.chat != "llama3.1" && a.chat != "mistral" &&
      a.chat != "chatml")
    fail("--chat-template: expected llama2, llama3, llama3.1, mistral, chatml or auto, got '{}'", a.chat);
  if (a.engine.max_adapters < 0) fail("--max-adapters must be >= 0, got {}", a.engine.max_adapters);
  if (a.engine.max_batch_tokens < 1) fail("--max-batch-tokens must be at least 1, got {}", a.engine.max_batch_tokens);
  if (a.engine.max_sequences < 1) fail("--max-sequences must be at least 1, got {}", a.engine.max_sequences);
  check_decoder_choice(a.dec);
  const LlamaConfig cfg = load_llama_config(a.model);
  // The CPU decodes from fp32 weights in memory; the GPU reads them onto the device itself.
  LlamaWeights w;
  if (!a.dec.gpu()) w = load_llama_weights(cfg, CheckpointReader(a.model));
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = load_tokenizer(a.model);
  } catch (const Error& e) {  // a model without one still serves token-id prompts
    fmt::print(stderr, "ftune: {}; serving token-id prompts only\n", e.what());
  }
  std::unique_ptr<ServingEngine> engine;
  try {
    const DecoderChoice choice = a.dec;
    const std::string dir = a.model;
    engine = std::make_unique<ServingEngine>(
        cfg, std::move(w), adapters, tok.get(), a.engine,
        [choice, dir](const LlamaConfig& c, const LlamaWeights& base) { return make_decoder(choice, c, dir, &base); });
  } catch (const Error& e) {
    const std::string m = e.what();  // the engine's adapter errors name the flag they came from
    fail("{}{}", m.starts_with("adapter") ? "--" : "", m);
  }
  Api api(*engine, tok.get(), served_model(name, a.model, tok.get(), cfg, a.chat));
  Server server(api);
  const int port = server.bind(a.host, a.port);
  std::string names;
  for (const AdapterSource& s : adapters) names += (names.empty() ? "" : ", ") + s.name;
  fmt::print(stderr, "ftune: serving {}{} on http://{}:{}\n", name, names.empty() ? "" : " with adapters " + names,
             a.host, port);
  // A first SIGINT or SIGTERM stops the listener (requests in flight are answered); a second one
  // ends the process at once. Handlers may only set a flag, so a thread watches it.
  StopSignals signals;
  std::atomic<bool> over{false};
  std::thread watcher([&] {
    while (!over) {  // again until the listener is over: a signal may come before it has started
      if (signals.requested()) server.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  server.listen();
  over = true;
  watcher.join();
  fmt::print(stderr, "ftune: server stopped{}\n",
             signals.requested() ? fmt::format(" by signal {}", signals.signal()) : "");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "Serve a model and its adapters over an OpenAI-compatible HTTP API (CPU or GPU)");
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Hugging Face model directory (the base)")->required();
  cmd->add_option("--adapter", a->adapters, "NAME=DIR: a PEFT adapter served as model NAME (repeatable)");
  cmd->add_option("--name", a->name, "The base's model name in requests (default: the --model argument)");
  cmd->add_option("--host", a->host, "Address to listen on (default 127.0.0.1)");
  cmd->add_option("--port", a->port, "Port (default 8000; 0: any free port, printed at start)");
  cmd->add_option("--chat-template", a->chat,
                  "Chat template for /v1/chat/completions: llama2, llama3, llama3.1, mistral, chatml, or auto "
                  "(default: the model's own)");
  cmd->add_option("--max-adapters", a->engine.max_adapters,
                  "Adapters held in memory at once (0, default: all); the others are read when asked for");
  cmd->add_option("--max-batch-tokens", a->engine.max_batch_tokens, "Prompt tokens fed per forward pass (default 512)");
  cmd->add_option("--max-sequences", a->engine.max_sequences, "Sequences decoded together (default 64)");
  add_decoder_options(cmd, a->dec);
  cmd->callback([a] { run(*a); });
}

}  // namespace ftune
