// `ftune serve` in process, on an ephemeral port, through cpp-httplib's client: lm-eval's
// local-completions requests give transformers' (and ftune's own) log-softmax, greedy and sampled
// completions give what generate() gives, the tokenizer routes give what lm-eval's remote
// tokenizer reads, and every kind of bad request gets a 4xx JSON error while the server goes on.
#include <fmt/format.h>

#include <cstdlib>

#include "data/chat_template.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "serve_util.h"

namespace ftune {
namespace {

using namespace testing;

// fp32 log-softmax against transformers' float64 logits: measured up to 8e-7 over the five
// fixtures; 1e-5 is ftune's fp32 bound (test_hf_golden), and a token read one position off moves
// a log-probability by whole units.
constexpr double kHfTol = 1e-5;
// What lm-eval's LocalCompletionsAPI.parse_logprobs makes of one choice.
std::pair<double, bool> lm_eval_parse(const json& choice, size_t ctxlen) {
  const json& lp = choice["logprobs"];
  const size_t end = lp["token_logprobs"].size() - 1;
  double sum = 0;
  bool greedy = true;
  for (size_t i = ctxlen; i < end; ++i) {
    const double t = lp["token_logprobs"][i].get<double>();
    sum += t;
    double best = -INFINITY;
    for (const auto& [k, v] : lp["top_logprobs"][i].items()) best = std::max(best, v.get<double>());
    greedy = greedy && t == best;  // exact, as lm-eval compares
  }
  return {sum, greedy};
}

TEST(Server, LoglikelihoodRequestsGiveTransformersLogSoftmax) {
  int cases = 0;
  for (const auto& e : fs::directory_iterator(kFixtures)) {
    if (!fs::exists(e.path() / "golden.safetensors")) continue;
    SCOPED_TRACE(e.path().filename().string());
    LiveServer srv(e.path() / "model", {{"tuned", (e.path() / "adapter").string()}});
    const SafetensorsFile golden = SafetensorsFile::open((e.path() / "golden.safetensors").string());
    const auto ids = i64_rows(golden, "input_ids");
    const Tensor ref = golden.read_f32("logits");  // transformers + peft, float64, [B, T, V]
    const int64_t T = static_cast<int64_t>(ids[0].size()), V = srv.cfg().vocab_size;
    // Exactly what lm-eval's local-completions sends for loglikelihood requests.
    const json j = srv.complete({{"model", "tuned"},
                                 {"prompt", ids},
                                 {"max_tokens", 1},
                                 {"temperature", 0},
                                 {"logprobs", 1},
                                 {"echo", true},
                                 {"seed", 1234}});
    ASSERT_EQ(j["choices"].size(), ids.size());
    Rng rng(cases + 1);
    for (size_t b = 0; b < ids.size(); ++b) {
      const json& c = j["choices"][b];
      ASSERT_EQ(c["index"], b);
      const json& lp = c["logprobs"];
      ASSERT_EQ(lp["token_logprobs"].size(), static_cast<size_t>(T + 1));  // the prompt, then one generated token
      EXPECT_TRUE(lp["token_logprobs"][0].is_null());
      EXPECT_TRUE(lp["top_logprobs"][0].is_null());
      EXPECT_EQ(lp["tokens"][1], fmt::format("token_id:{}", ids[b][1]));  // no tokenizer: vLLM's id form
      double worst = 0, want_sum = 0;
      const size_t ctxlen = 1 + rng.below(static_cast<uint64_t>(T - 2));
      bool want_greedy = true;
      for (int64_t i = 1; i < T; ++i) {
        const float* row = ref.ptr() + (b * T + i - 1) * V;
        const double want = log_softmax(row, V, ids[b][i]);
        worst = std::max(worst, std::abs(lp["token_logprobs"][i].get<double>() - want));
        if (static_cast<size_t>(i) >= ctxlen) {
          want_sum += want;
          want_greedy = want_greedy && std::max_element(row, row + V) - row == ids[b][i];
        }
      }
      EXPECT_LT(worst, kHfTol);
      const auto [sum, greedy] = lm_eval_parse(c, ctxlen);
      EXPECT_NEAR(sum, want_sum, kHfTol * static_cast<double>(T - ctxlen));
      EXPECT_EQ(greedy, want_greedy);
      std::printf("[ measured ] %s row %zu: worst |log p - transformers'| %.2e\n", e.path().filename().c_str(), b,
                  worst);
    }
    ++cases;
  }
  EXPECT_EQ(cases, 5);
}

TEST(Server, EchoLogprobsAreFtunesLogitsAndGreedinessIsExact) {
  const fs::path dir = kFixtures / "gqa_tied";
  LiveServer srv(dir / "model", {});
  const LlamaConfig& cfg = srv.cfg();
  const LlamaWeights w = load_llama_weights(cfg, CheckpointReader((dir / "model").string()));
  Rng rng(11);
  std::vector<int32_t> ids = random_ids(rng, 9, cfg.vocab_size);
  GenerateOptions o;
  o.max_new_tokens = 8;
  const auto greedy = solo(dir / "model", "", {ids}, o, nullptr)[0].tokens;
  const size_t ctxlen = ids.size();
  ids.insert(ids.end(), greedy.begin(), greedy.end());  // context, then its greedy continuation
  // ftune's training model over the whole row.
  std::vector<int32_t> labels(ids.size(), -100);
  ModelOptions mo;
  mo.max_batch = 1, mo.max_seq = static_cast<int64_t>(ids.size());
  const Tensor logits = LlamaCpu(cfg, w, nullptr, mo).logits(make_batch({&ids}, {&labels}, 0));
  for (const int max_tokens : {0, 1}) {
    const json j = srv.complete({{"model", "base"},
                                 {"prompt", ids},
                                 {"max_tokens", max_tokens},
                                 {"temperature", 0},
                                 {"logprobs", 3},
                                 {"echo", true}});
    const json& lp = j["choices"][0]["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), ids.size() + max_tokens);
    double worst = 0;
    for (size_t i = 1; i < ids.size(); ++i) {
      const float* row = logits.ptr() + (i - 1) * cfg.vocab_size;
      const double d = std::abs(lp["token_logprobs"][i].get<double>() - log_softmax(row, cfg.vocab_size, ids[i]));
      EXPECT_LT(d, kSelfTol) << i;
      worst = std::max(worst, d);
      EXPECT_LE(lp["top_logprobs"][i].size(), 4u);  // 3 alternatives and the token itself
      EXPECT_GE(lp["top_logprobs"][i].size(), 3u);
    }
    std::printf("[ measured ] max_tokens %d: worst |log p - training model's| %.2e\n", max_tokens, worst);
    if (max_tokens == 1) {  // lm-eval's reading: the continuation is the greedy one
      const auto [sum, is_greedy] = lm_eval_parse(j["choices"][0], ctxlen);
      EXPECT_TRUE(is_greedy);
      EXPECT_LT(sum, 0.0);
    }
  }
  // A continuation that is not the greedy one is not read as greedy.
  ids.back() = (ids.back() + 1) % static_cast<int32_t>(cfg.vocab_size);
  const json j =
      srv.complete({{"prompt", ids}, {"max_tokens", 1}, {"temperature", 0}, {"logprobs", 1}, {"echo", true}});
  EXPECT_FALSE(lm_eval_parse(j["choices"][0], ctxlen).second);
}

TEST(Server, CompletionsAreGenerates) {
  TempDir tmp("serve-text");
  const fs::path model = tokenizer_model(tmp);
  LiveServer srv(model, {});
  const Tokenizer& tok = *srv.tok();
  const std::vector<std::string> texts = {"Once upon a time", "The little dog", "She said hello to"};
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& t : texts) {
    prompts.push_back({tok.bos_id()});
    for (int32_t id : tok.encode(t)) prompts.back().push_back(id);
  }
  GenerateOptions o;
  o.max_new_tokens = 12;
  for (int64_t e : srv.cfg().eos_token_ids) o.eos_ids.push_back(static_cast<int32_t>(e));
  // Greedy, one text prompt at a time: the text in the prompt's context, as generate() gives it.
  int stops = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    GenerateOptions oi = o;
    oi.context = prompts[i];
    const Generation want = solo(model, "", {prompts[i]}, oi, &tok)[0];
    const json j = srv.complete({{"model", "base"}, {"prompt", texts[i]}, {"max_tokens", 12}, {"temperature", 0}});
    EXPECT_EQ(j["choices"][0]["text"], as_sent(want.text)) << texts[i];
    EXPECT_EQ(j["choices"][0]["finish_reason"], want.finish_reason == "length" ? "length" : "stop");
    EXPECT_EQ(j["usage"]["prompt_tokens"], prompts[i].size());
    EXPECT_EQ(j["usage"]["completion_tokens"], want.tokens.size());
    // echo puts the prompt before it; a stop string from the middle of the text ends it there.
    const json echo = srv.complete({{"prompt", texts[i]}, {"max_tokens", 12}, {"temperature", 0}, {"echo", true}});
    EXPECT_EQ(echo["choices"][0]["text"], as_sent(texts[i] + want.text));
    // Two ASCII characters from the middle of the text on (a random model's text has stray bytes).
    size_t mid = want.text.size() / 2;
    while (mid + 1 < want.text.size() && !(std::isalnum(static_cast<unsigned char>(want.text[mid])) &&
                                           std::isalnum(static_cast<unsigned char>(want.text[mid + 1]))))
      ++mid;
    if (mid + 1 < want.text.size()) {
      const std::string stop = want.text.substr(mid, 2);
      oi.stop = {stop};
      const Generation cut = solo(model, "", {prompts[i]}, oi, &tok)[0];
      const json s = srv.complete({{"prompt", texts[i]}, {"max_tokens", 12}, {"temperature", 0}, {"stop", stop}});
      EXPECT_EQ(s["choices"][0]["text"], as_sent(cut.text));
      EXPECT_EQ(s["choices"][0]["finish_reason"], "stop");
      EXPECT_EQ(cut.text.find(stop), std::string::npos);
      ++stops;
    }
  }
  EXPECT_GE(stops, 1);
  // The pieces of an echoed prompt add up to its text, and text_offset indexes them.
  const json e =
      srv.complete({{"prompt", texts[0]}, {"max_tokens", 12}, {"temperature", 0}, {"echo", true}, {"logprobs", 1}});
  const json& elp = e["choices"][0]["logprobs"];
  std::string joined;
  for (size_t k = 0; k < prompts[0].size(); ++k) {
    EXPECT_EQ(elp["text_offset"][k], static_cast<int64_t>(joined.size())) << k;  // ASCII: characters are bytes
    joined += elp["tokens"][k].get<std::string>();
  }
  EXPECT_EQ(joined, texts[0]);
  // Sampled, all prompts in one request (one batch): prompt i draws from stream i, as generate()'s row i.
  GenerateOptions os = o;
  os.sampling = {0.8, 40, 0.9, 7};
  const auto want = solo(model, "", prompts, os, &tok);
  auto sampled = [&](int seed) {
    return srv.complete({{"prompt", texts},
                         {"max_tokens", 12},
                         {"temperature", 0.8},
                         {"top_k", 40},
                         {"top_p", 0.9},
                         {"seed", seed},
                         {"logprobs", 0},
                         {"return_tokens_as_token_ids", true}});
  };
  const json j = sampled(7), other = sampled(8);
  ASSERT_EQ(j["choices"].size(), texts.size());
  bool seed_matters = false;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = [](const json& c) {
      std::vector<int32_t> out;
      for (const json& t : c["logprobs"]["tokens"]) out.push_back(std::stoi(t.get<std::string>().substr(9)));
      return out;
    };
    EXPECT_EQ(ids(j["choices"][i]), want[i].tokens) << i;
    seed_matters = seed_matters || ids(other["choices"][i]) != want[i].tokens;
    std::vector<int32_t> all = prompts[i];
    all.insert(all.end(), want[i].tokens.begin(), want[i].tokens.end());
    EXPECT_EQ(j["choices"][i]["text"], as_sent(tok.decode(all).substr(tok.decode(prompts[i]).size()))) << i;
    for (const json& lp : j["choices"][i]["logprobs"]["token_logprobs"]) EXPECT_LT(lp.get<double>(), 0.0);
  }
  EXPECT_TRUE(seed_matters);
}

TEST(Server, TokenizerRoutesAndChat) {
  TempDir tmp("serve-tok");
  const fs::path model = tokenizer_model(tmp);
  LiveServer srv(model, {});
  const Tokenizer& tok = *srv.tok();
  // lm-eval's remote tokenizer: /tokenizer_info's eos_token, read back to its id through /tokenize.
  const auto [s_info, info] = srv.get("/tokenizer_info");
  ASSERT_EQ(s_info, 200);
  EXPECT_EQ(info["eos_token"], "</s>");
  EXPECT_EQ(info["bos_token"], "<s>");
  EXPECT_EQ(info["eos_token_id"], tok.eos_id());
  EXPECT_EQ(info["bos_token_id"], tok.bos_id());
  EXPECT_EQ(info["chat_template"], chat_template_source(model.string()));
  EXPECT_EQ(info["model_max_length"], srv.cfg().max_position_embeddings);
  auto tokenize = [&](const json& body) { return srv.post("/tokenize", body).second["tokens"]; };
  EXPECT_EQ(tokenize({{"prompt", "</s>"}, {"add_special_tokens", false}}), json::array({tok.eos_id()}));
  Rng rng(4);
  const std::vector<std::string> words = {"the", "dog", "ran", "home", "quickly", ",", "and", "slept", "."};
  for (int trial = 0; trial < 5; ++trial) {  // random sentences round-trip through the two routes
    std::string text;
    for (int k = 0; k < 6; ++k) text += (k ? " " : "") + words[rng.below(words.size())];
    const json ids = tokenize({{"prompt", text}});
    std::vector<int32_t> want = {tok.bos_id()};
    for (int32_t id : tok.encode(text)) want.push_back(id);
    EXPECT_EQ(ids_of(ids), want) << text;
    EXPECT_EQ(ids_of(tokenize({{"prompt", text}, {"add_special_tokens", false}})),
              std::vector<int32_t>(want.begin() + 1, want.end()));
    EXPECT_EQ(srv.post("/detokenize", {{"tokens", ids}}).second["prompt"], text);
  }
  // /v1/models: the base.
  const auto [s_models, models] = srv.get("/v1/models");
  ASSERT_EQ(s_models, 200);
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "base");
  // Chat: the messages in the model's template (llama2, from its chat_template), up to the answer.
  const std::vector<Turn> turns = {{"system", "Be brief."}, {"user", "Tell me a story"}};
  const std::vector<int32_t> prompt = chat_prompt_ids("llama2", turns, tok);
  GenerateOptions o;
  o.max_new_tokens = 8, o.context = prompt;
  for (int64_t e : srv.cfg().eos_token_ids) o.eos_ids.push_back(static_cast<int32_t>(e));
  const Generation want = solo(model, "", {prompt}, o, &tok)[0];
  auto [status, j] = srv.post(
      "/v1/chat/completions",
      {{"model", "base"},
       {"max_tokens", 8},
       {"temperature", 0},
       {"messages",
        {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Tell me a story"}}}}});
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], want.text);
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], want.tokens.size());
}

// A Mistral model (its chat_template detected): a conversation its template renders is answered; one
// with a system turn, which the template's raise_exception refuses, is a 400 naming messages.
TEST(Server, MistralTemplateRefusesASystemTurnWithA400) {
  TempDir tmp("serve-mistral");
  const fs::path model = tokenizer_model(tmp);
  std::ofstream(model / "tokenizer_config.json")
      << json{{"bos_token", "<s>"},
              {"eos_token", "</s>"},
              {"chat_template", read_text(fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/chat_templates/mistral-instruct.jinja")}}
             .dump();
  LiveServer srv(model, {});
  const json user = {{"role", "user"}, {"content", "Tell me a story"}};
  auto [ok, a] = srv.post("/v1/chat/completions", {{"model", "base"}, {"max_tokens", 2}, {"messages", {user}}});
  EXPECT_EQ(ok, 200) << a.dump();
  EXPECT_EQ(a["usage"]["prompt_tokens"], chat_prompt_ids("mistral", {{"user", "Tell me a story"}}, *srv.tok()).size());
  auto [bad, e] = srv.post("/v1/chat/completions",
                           {{"model", "base"},
                            {"max_tokens", 2},
                            {"messages", {{{"role", "system"}, {"content", "Be brief."}}, user}}});
  EXPECT_EQ(bad, 400) << e.dump();
  EXPECT_EQ(e["error"]["param"], "messages") << e.dump();
  EXPECT_NE(e["error"]["message"].get<std::string>().find("only user and assistant turns"), std::string::npos) << e.dump();
}

// The real Llama 3 tokenizer (tokenizer.json, byte-level BPE, special tokens read in text) behind
// the routes lm-eval's remote tokenizer uses, on a one-layer random model of its vocabulary.
TEST(Server, RealLlama3TokenizerRoutes) {
  const char* env = std::getenv("FTUNE_ASSETS");
  const fs::path assets = env && *env ? fs::path(env) : fs::path(FTUNE_SOURCE_DIR) / "build/assets";
  const fs::path src = assets / "tokenizer-llama3/package/models";
  if (!fs::exists(src / "tokenizer.json")) {
    ADD_FAILURE() << src << "/tokenizer.json is missing: run `bash scripts/fetch-assets.sh " << assets.string()
                  << "` (or point FTUNE_ASSETS at a directory it filled)";
    return;
  }
  TempDir tmp("serve-llama3");
  const fs::path model = tmp / "model";
  fs::create_directories(model);
  LlamaConfig cfg = preset_config("tiny");
  cfg.vocab_size = 128256, cfg.hidden_size = 32, cfg.intermediate_size = 64, cfg.num_hidden_layers = 1;
  cfg.num_attention_heads = 2, cfg.num_key_value_heads = 1, cfg.head_dim = 16;
  cfg.bos_token_ids = {128000}, cfg.eos_token_ids = {128001, 128009};
  save_llama_model(cfg, random_llama_weights(cfg, 1), model.string(), DType::F32);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(src / f, model / f);
  LiveServer srv(model, {});
  const Tokenizer& tok = *srv.tok();
  const auto [s_info, info] = srv.get("/tokenizer_info");
  ASSERT_EQ(s_info, 200);
  EXPECT_EQ(info["eos_token"], "<|end_of_text|>");
  EXPECT_EQ(info["bos_token"], "<|begin_of_text|>");
  EXPECT_EQ(info["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(info["chat_template"], chat_template_source(model.string()));
  auto tokenize = [&](const json& body) { return ids_of(srv.post("/tokenize", body).second["tokens"]); };
  // lm-eval's eos_token_id: the first id of the EOS string, tokenized without special tokens.
  EXPECT_EQ(tokenize({{"prompt", info["eos_token"]}, {"add_special_tokens", false}}),
            std::vector<int32_t>{tok.token_id("<|end_of_text|>")});
  const std::string text = "Hello, world!<|eot_id|> Bonjour";
  std::vector<int32_t> want = {128000};
  for (int32_t id : tok.encode(text)) want.push_back(id);
  EXPECT_EQ(tokenize({{"prompt", text}}), want);
  EXPECT_NE(std::find(want.begin(), want.end(), 128009), want.end());  // <|eot_id|> as one token
  // Messages in the model's template (llama3, detected from its chat_template).
  const json messages = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi there"}}};
  EXPECT_EQ(tokenize({{"messages", messages}}),
            chat_prompt_ids("llama3", {{"system", "Be brief."}, {"user", "Hi there"}}, tok));
  auto [status, j] = srv.post(
      "/v1/chat/completions",
      {{"messages", messages}, {"max_tokens", 3}, {"temperature", 0}, {"logprobs", true}, {"top_logprobs", 2}});
  ASSERT_EQ(status, 200) << j.dump();
  const json& content = j["choices"][0]["logprobs"]["content"];
  EXPECT_EQ(content.size(), j["usage"]["completion_tokens"].get<size_t>());
  for (const json& c : content) {
    EXPECT_EQ(c["top_logprobs"].size(), 2u);
    EXPECT_EQ(c["logprob"], c["top_logprobs"][0]["logprob"]);  // greedy: the best one
  }
}

TEST(Server, BadRequestsGetA4xxJsonErrorAndTheServerGoesOn) {
  LiveServer srv(kFixtures / "gqa_tied" / "model", {{"a", (kFixtures / "gqa_tied" / "adapter").string()}});
  const int64_t ctx = srv.cfg().max_position_embeddings;
  const json ok = {{"prompt", {1, 2, 3}}, {"max_tokens", 2}, {"temperature", 0}};
  auto with = [&](const char* key, const json& v) {
    json j = ok;
    j[key] = v;
    return j.dump();
  };
  struct Case {
    std::string path, body;
    int status;
    std::string message;  // a part of error.message
  };
  const std::vector<Case> cases = {
      {"/v1/completions", R"({"prompt": [1, 2)", 400, "not valid JSON"},
      {"/v1/completions", R"([1, 2])", 400, "must be a JSON object"},
      {"/v1/completions", std::string(300, '[') + std::string(300, ']'), 400, "not valid JSON"},
      {"/v1/completions", with("model", "nope"), 404, "'nope' is not served here"},
      {"/v1/completions", with("model", 3), 400, "model: expected a string"},
      {"/v1/completions", R"({"max_tokens": 2})", 400, "prompt: required"},
      {"/v1/completions", with("prompt", 17), 400, "prompt: expected a string"},
      {"/v1/completions", with("prompt", json::array()), 400, "prompt: expected"},
      {"/v1/completions", with("prompt", {1, "a"}), 400, "prompt: expected"},
      {"/v1/completions", with("prompt", {{1, 2}, {3, 2.5}}), 400, "prompt: token ids must be integers"},
      {"/v1/completions", with("prompt", {1, 256}), 400, "token id 256 is outside the vocabulary of 256"},
      {"/v1/completions", with("prompt", {-1}), 400, "token id -1 is outside"},
      {"/v1/completions", with("prompt", "text"), 400, "has no tokenizer"},
      {"/v1/completions", with("prompt", std::vector<int>(static_cast<size_t>(ctx), 5)), 400,
       "maximum context length is 128"},
      {"/v1/completions", with("max_tokens", -1), 400, "max_tokens: expected an integer in [0, 128]"},
      {"/v1/completions", with("max_tokens", "4"), 400, "max_tokens: expected an integer"},
      {"/v1/completions", with("max_tokens", 1.5), 400, "max_tokens: expected an integer"},
      {"/v1/completions", with("temperature", -0.5), 400, "temperature: expected a number"},
      {"/v1/completions", with("temperature", "hot"), 400, "temperature: expected a number"},
      {"/v1/completions", with("top_p", 0), 400, "top_p: expected a number in (0"},
      {"/v1/completions", with("top_p", 1.5), 400, "top_p"},
      {"/v1/completions", with("logprobs", -1), 400, "logprobs: expected an integer in [0, 20]"},
      {"/v1/completions", with("logprobs", true), 400, "logprobs: expected an integer"},
      {"/v1/completions", with("echo", "yes"), 400, "echo: expected true or false"},
      {"/v1/completions", with("seed", "x"), 400, "seed: expected an integer"},
      {"/v1/completions", with("stop", 5), 400, "stop: expected a string or a list of strings"},
      {"/v1/completions", with("stop", "\n"), 400, "stop: the model 'base' has no tokenizer"},
      {"/v1/completions", with("n", 2), 400, "n: only 1 is supported"},
      {"/v1/completions", with("stream", true), 400, "stream: streaming responses are not supported"},
      {"/v1/completions", with("presence_penalty", 0.5), 400, "presence_penalty: only 0"},
      {"/v1/completions", with("stop_token_ids", {999}), 400, "stop_token_ids: token id 999"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})", 400, "has no tokenizer"},
      {"/v1/chat/completions", R"({"model": "zzz", "messages": []})", 404, "'zzz' is not served here"},
      {"/tokenize", R"({"prompt": "hello"})", 400, "has no tokenizer"},
      {"/detokenize", R"({"tokens": [1, 2]})", 400, "has no tokenizer"},
      {"/v1/nothing", "{}", 404, "no route POST /v1/nothing"},
      {"/v1/models", "{}", 405, "does not take POST"},
  };
  for (const Case& c : cases) {
    const auto [status, j] = srv.post_raw(c.path, c.body);
    EXPECT_EQ(status, c.status) << c.path << " " << c.body.substr(0, 80) << " -> " << j.dump();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << c.body.substr(0, 80);
    const json& e = j["error"];
    ASSERT_TRUE(e["message"].is_string() && e["type"].is_string()) << j.dump();
    EXPECT_NE(e["message"].get<std::string>().find(c.message), std::string::npos)
        << j.dump() << "\nexpected: " << c.message;
  }
  // A prompt that fits the context exactly with max_tokens is served; the server still answers.
  const json edge = srv.complete({{"prompt", std::vector<int>(static_cast<size_t>(ctx - 2), 5)},
                                  {"max_tokens", 2},
                                  {"temperature", 0},
                                  {"model", "a"}});
  EXPECT_EQ(edge["choices"][0]["finish_reason"], "length");
  const auto [gs, health] = srv.get("/health");
  EXPECT_EQ(gs, 200);
  const auto [ms, wrong_method] = srv.get("/v1/completions");
  EXPECT_EQ(ms, 405);
  EXPECT_TRUE(wrong_method["error"]["message"].is_string());
}

}  // namespace
}  // namespace ftune
