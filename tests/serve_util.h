// Shared by the server tests: a server in process on an ephemeral port (cpp-httplib's client for
// requests), the reference generations and log-probabilities of the CPU decoder alone, and the
// models and adapters they run on.
#pragma once
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <memory>
#include <thread>

#include "core/error.h"
#include "infer/api.h"
#include "infer/server.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "model/merge.h"
#include "model/presets.h"
#include "test_util.h"

namespace ftune::testing {

namespace fs = std::filesystem;
using json = nlohmann::json;
inline const fs::path kFixtures = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";

// Against ftune's own fp32 logits (the training model's full forward, or the decoder one row at a
// time with the adapter merged): the same ops summed in another order; measured 4e-7, and 1e-5 is
// the bound the decoder holds against the training model (test_generate).
inline constexpr double kSelfTol = 1e-5;

// A server over one base and its adapters, listening on a thread; requests by httplib's client.
class LiveServer {
 public:
  LiveServer(const fs::path& model, const std::vector<AdapterSource>& adapters, EngineOptions o = {})
      : cfg_(load_llama_config(model.string())) {
    try {
      tok_ = load_tokenizer(model.string());
    } catch (const Error&) {  // the fixtures have none: token ids only
    }
    engine_ = std::make_unique<ServingEngine>(cfg_, load_llama_weights(cfg_, CheckpointReader(model.string())),
                                              adapters, tok_.get(), o);
    api_ = std::make_unique<Api>(*engine_, tok_.get(), served_model("base", model.string(), tok_.get(), cfg_, "auto"));
    server_ = std::make_unique<Server>(*api_);
    port_ = server_->bind("127.0.0.1", 0);
    thread_ = std::thread([this] { server_->listen(); });
    for (int i = 0; i < 500 && get("/health").first != 200; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ~LiveServer() {
    server_->stop();
    thread_.join();
  }
  std::pair<int, json> post_raw(const std::string& path, const std::string& body) {
    httplib::Client cli("127.0.0.1", port_);
    cli.set_read_timeout(120);
    auto r = cli.Post(path.c_str(), body, "application/json");
    if (!r) return {-1, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }
  std::pair<int, json> post(const std::string& path, const json& body) { return post_raw(path, body.dump()); }
  std::pair<int, json> get(const std::string& path) {
    httplib::Client cli("127.0.0.1", port_);
    auto r = cli.Get(path.c_str());
    if (!r) return {-1, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }
  // A completion that must succeed.
  json complete(const json& body) {
    auto [status, j] = post("/v1/completions", body);
    EXPECT_EQ(status, 200) << j.dump();
    return j;
  }
  const LlamaConfig& cfg() const { return cfg_; }
  const Tokenizer* tok() const { return tok_.get(); }
  ServingEngine& engine() { return *engine_; }

 private:
  LlamaConfig cfg_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<ServingEngine> engine_;
  std::unique_ptr<Api> api_;
  std::unique_ptr<Server> server_;
  int port_ = 0;
  std::thread thread_;
};

// Base (+ an adapter merged in), generated with the CPU decoder, the prompts batched together.
inline std::vector<Generation> solo(const fs::path& model, const std::string& adapter,
                                    const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o,
                                    const Tokenizer* tok) {
  const LlamaConfig cfg = load_llama_config(model.string());
  LlamaWeights w = load_llama_weights(cfg, CheckpointReader(model.string()));
  if (!adapter.empty()) merge_adapter(w, load_peft_adapter(adapter, cfg));
  BatchDecoder dec(cfg, w);
  return generate(dec, tok, prompts, o);
}

// log p of each of `tokens` after `prompt`, from the decoder one row at a time (adapter merged).
inline std::vector<double> solo_logprobs(const fs::path& model, const std::string& adapter,
                                         const std::vector<int32_t>& prompt, const std::vector<int32_t>& tokens) {
  const LlamaConfig cfg = load_llama_config(model.string());
  LlamaWeights w = load_llama_weights(cfg, CheckpointReader(model.string()));
  if (!adapter.empty()) merge_adapter(w, load_peft_adapter(adapter, cfg));
  CpuDecoder dec(cfg, w, 1, static_cast<int64_t>(prompt.size() + tokens.size()));
  std::vector<float> l;
  for (int32_t t : prompt) l = dec.step(0, t);
  std::vector<double> out;
  for (int32_t t : tokens) {
    out.push_back(log_softmax(l.data(), cfg.vocab_size, t));
    l = dec.step(0, t);
  }
  return out;
}

inline std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// A text as JSON carries it: bytes that are not UTF-8 (a random model's stray byte tokens) as U+FFFD.
inline std::string as_sent(const std::string& s) {
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

inline std::vector<int32_t> random_ids(Rng& rng, size_t n, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = static_cast<int32_t>(3 + rng.below(static_cast<uint64_t>(vocab - 3)));
  return ids;
}

// A random adapter of the fixture adapter's shape, B non-zero (so that it changes the outputs).
inline void write_random_adapter(const fs::path& model, const fs::path& like, const fs::path& out, uint64_t seed) {
  const LlamaConfig cfg = load_llama_config(model.string());
  LoraParams p = LoraParams::init(cfg, load_peft_config(like.string()), seed);
  uint64_t s = seed;
  for (auto& layer : p.layers)
    for (auto& pair : layer)
      if (pair.active()) fill_normal(pair.b, ++s, 0.05f);
  fs::create_directories(out);
  save_peft_adapter(out.string(), p, model.string());
}

inline std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A tiny random model with the quickstart's SentencePiece tokenizer and Llama 2's chat template.
inline fs::path tokenizer_model(const TempDir& dir) {
  LlamaConfig cfg = preset_config("tiny");
  cfg.vocab_size = 512;
  const fs::path m = dir / "model";
  fs::create_directories(m);
  save_llama_model(cfg, random_llama_weights(cfg, 3), m.string(), DType::F32);
  fs::copy_file(fs::path(FTUNE_SOURCE_DIR) / "examples/quickstart/tokenizer.model", m / "tokenizer.model");
  std::ofstream(m / "tokenizer_config.json") << json{
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"chat_template", read_text(fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/chat_templates/llama2-chat.jinja")}}
                                                  .dump();
  return m;
}

}  // namespace ftune::testing
