// From rows to examples: format, template, tokenization, loss mask, length policy, bad-row
// accounting, validation split.
#include "data/dataset.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/rng.h"
#include "data/chat_template.h"
#include "data/formats.h"
#include "data/row_source.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

namespace {

constexpr size_t kProblemsKept = 5;
constexpr int32_t kIgnore = -100;

// The loss predicts labels[i] from position i-1, so labels[0] is never a target.
int64_t targets(const Example& ex) {
  int64_t n = 0;
  for (size_t i = 1; i < ex.labels.size(); ++i) n += ex.labels[i] != kIgnore;
  return n;
}

Example ids_example(const Sample& s, int64_t vocab_size) {
  Example ex;
  for (size_t i = 0; i < s.ids.size(); ++i) {
    if (s.ids[i] < 0 || s.ids[i] >= vocab_size)
      throw RowProblem{fmt::format("input_ids[{}] = {} is out of range [0, {})", i, s.ids[i], vocab_size)};
    ex.ids.push_back(static_cast<int32_t>(s.ids[i]));
  }
  if (s.labels.empty()) {
    ex.labels = ex.ids;
    return ex;
  }
  for (size_t i = 0; i < s.labels.size(); ++i) {
    if (s.labels[i] != kIgnore && (s.labels[i] < 0 || s.labels[i] >= vocab_size))
      throw RowProblem{fmt::format("labels[{}] = {} is out of range (expected -100 or an id in [0, {}))", i,
                                   s.labels[i], vocab_size)};
    ex.labels.push_back(static_cast<int32_t>(s.labels[i]));
  }
  return ex;
}

}  // namespace

std::string DatasetStats::summary() const {
  const std::string cut =
      answer_cut ? fmt::format(" ({} whose prompt alone is longer than max_seq_len)", answer_cut) : std::string();
  return fmt::format("{} examples, {} tokens ({} trained); {} truncated, {} dropped at max_seq_len, {} with nothing to "
                     "learn{}, {} malformed rows skipped",
                     kept, tokens, trained_tokens, truncated, dropped, skipped, cut, bad);
}

std::string resolve_template(const DataSettings& cfg, const std::string& model_dir) {
  if (cfg.template_name != "auto") return cfg.template_name;
  const std::string t = model_dir.empty() ? "" : detect_chat_template(model_dir);
  return t.empty() ? "alpaca" : t;
}

std::vector<Example> load_examples(const std::string& path, const DataSettings& cfg, const Tokenizer* tok,
                                   int64_t vocab_size, const std::string& template_name, DatasetStats* stats) {
  FT_ASSERT(vocab_size > 0);
  DatasetStats local;
  DatasetStats& st = stats ? *stats : local;
  st = DatasetStats{};
  std::vector<std::string> renames = cfg.columns;
  if (cfg.text_field != "text") renames.push_back("text=" + cfg.text_field);
  const ColumnMap cols(renames);
  TemplateOptions tpl;
  tpl.name = template_name;
  tpl.custom = cfg.custom_template;
  tpl.train_on_all = cfg.train_on == "all";
  tpl.add_bos = cfg.add_bos;
  tpl.add_eos = cfg.add_eos;
  RowSourceOptions src;
  src.text_field = cols("text");
  src.text_sample_by = cfg.text_sample_by;
  src.columns = format_columns(cfg.format, cols);

  // Rows are converted (format, template, tokenization) in parallel chunks; the outcomes are then
  // applied in file order, so counts, kept order and the reported rows do not depend on threads.
  struct Pending {
    RowRef at;
    nlohmann::json row;
    std::string problem;  // set for rows the reader already rejected
  };
  struct Outcome {
    Example ex;
    std::string problem, fatal;
  };
  auto convert = [&](const Pending& p, Outcome& o) {
    if (!p.problem.empty()) {
      o.problem = p.problem;
      return;
    }
    try {
      const Sample s = to_sample(p.row, cfg.format, cols);
      if (s.kind == Sample::Kind::Ids) {
        o.ex = ids_example(s, vocab_size);
        return;
      }
      if (!tok) fail("{}: a text row needs the model's tokenizer, and none was found", p.at.str());
      try {
        tokenize_pieces(render(s, tpl, *tok), *tok, template_name, &o.ex.ids, &o.ex.labels);
      } catch (const Error& e) {  // a setting the template cannot honour: name where it surfaced
        fail("{}: {}", p.at.str(), e.what());
      }
      for (int32_t id : o.ex.ids)
        if (id < 0 || id >= vocab_size)
          fail("{}: the tokenizer produced id {}, outside the model's vocabulary [0, {})", p.at.str(), id, vocab_size);
    } catch (const RowProblem& e) {
      o.problem = e.reason;
    } catch (const Error& e) {
      o.fatal = e.what();
    }
  };

  std::vector<Example> out;
  auto apply = [&](const Pending& p, Outcome& o) {
    ++st.rows;
    if (!o.fatal.empty()) throw Error(o.fatal);
    if (!o.problem.empty()) {
      if (cfg.strict) fail("{}: {} (data.strict is true)", p.at.str(), o.problem);
      ++st.bad;
      if (st.problems.size() < kProblemsKept) st.problems.push_back(fmt::format("{}: {}", p.at.str(), o.problem));
      return;
    }
    Example& ex = o.ex;
    int64_t prompt = -1;  // untrained tokens before the first trained one, when truncation cut every trained one
    if (static_cast<int64_t>(ex.ids.size()) > cfg.max_seq_len) {
      if (cfg.overflow == "drop") {
        ++st.dropped;
        return;
      }
      size_t first = 1;  // labels[i] is predicted at position i-1: tokens 0..i-1 precede it
      while (first < ex.labels.size() && ex.labels[first] == kIgnore) ++first;
      if (first < ex.labels.size() && static_cast<int64_t>(first) >= cfg.max_seq_len) prompt = static_cast<int64_t>(first);
      ex.ids.resize(cfg.max_seq_len);
      ex.labels.resize(cfg.max_seq_len);
      ++st.truncated;
    }
    const int64_t t = targets(ex);
    if (ex.ids.size() < 2 || t == 0) {
      ++st.skipped;
      if (prompt >= 0) {
        ++st.answer_cut;
        st.shortest_cut_prompt = st.answer_cut == 1 ? prompt : std::min(st.shortest_cut_prompt, prompt);
      }
      return;
    }
    ++st.kept;
    st.tokens += static_cast<int64_t>(ex.ids.size());
    st.trained_tokens += t;
    out.push_back(std::move(ex));
  };

  constexpr size_t kChunk = 4096;
  std::vector<Pending> chunk;
  std::vector<Outcome> outcomes;
  auto flush = [&] {
    outcomes.assign(chunk.size(), Outcome{});
    const int64_t n = static_cast<int64_t>(chunk.size());
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < n; ++i) convert(chunk[i], outcomes[i]);
    for (size_t i = 0; i < chunk.size(); ++i) apply(chunk[i], outcomes[i]);
    chunk.clear();
  };
  read_rows(
      path, src,
      [&](const RowRef& at, const nlohmann::json& row) {
        chunk.push_back({at, row, {}});
        if (chunk.size() == kChunk) flush();
      },
      [&](const RowRef& at, const std::string& reason) {
        chunk.push_back({at, nlohmann::json(), reason});
        if (chunk.size() == kChunk) flush();
      });
  flush();

  if (st.rows == 0) fail("{}: dataset is empty", path);
  if (out.empty()) {
    if (st.bad == st.rows) fail("{}: all {} rows are malformed; the first: {}", path, st.bad, st.problems.front());
    if (st.dropped == st.rows)
      fail("{}: all {} rows are longer than data.max_seq_len={} and were dropped", path, st.rows, cfg.max_seq_len);
    if (st.answer_cut > 0 && st.answer_cut + st.bad + st.dropped == st.rows)
      fail("{}: no example left: in all {} readable rows the prompt alone (template '{}' included) is at least as long "
           "as data.max_seq_len={}, so truncation cut every answer; the shortest prompt takes {} tokens, {} more than "
           "fit (set data.max_seq_len to at least {}, or choose a shorter data.template)",
           path, st.answer_cut, template_name, cfg.max_seq_len, st.shortest_cut_prompt,
           st.shortest_cut_prompt + 1 - cfg.max_seq_len, st.shortest_cut_prompt + 1);
    fail("{}: no example left: of {} rows, {} were malformed, {} longer than data.max_seq_len={} and dropped, {} had "
         "fewer than 2 tokens or no trained label{}",
         path, st.rows, st.bad, st.dropped, cfg.max_seq_len, st.skipped,
         st.answer_cut ? fmt::format(" ({} of them because the prompt alone is longer than data.max_seq_len)", st.answer_cut) : "");
  }
  return out;
}

DataSplit load_data(const DataSettings& cfg, const Tokenizer* tok, int64_t vocab_size, const std::string& model_dir,
                    uint64_t seed) {
  if (cfg.train.empty()) fail("data.train is not set");
  DataSplit d;
  d.template_name = resolve_template(cfg, model_dir);
  d.train = load_examples(cfg.train, cfg, tok, vocab_size, d.template_name, &d.train_stats);
  if (!cfg.val.empty()) {
    d.val = load_examples(cfg.val, cfg, tok, vocab_size, d.template_name, &d.val_stats);
  } else if (cfg.val_fraction > 0) {
    std::vector<Example> keep;
    for (size_t i = 0; i < d.train.size(); ++i) {
      Rng r(seed, 0x56414Cull + i);
      (r.uniform() < cfg.val_fraction ? d.val : keep).push_back(std::move(d.train[i]));
    }
    if (keep.empty() || d.val.empty())
      fail("{}: data.val_fraction={} leaves {} training and {} validation examples; both need at least one", cfg.train,
           cfg.val_fraction, keep.size(), d.val.size());
    d.train = std::move(keep);
    // The held-out examples move their counts from the training summary to the validation one.
    d.val_stats.rows = static_cast<int64_t>(d.val.size());
    d.val_stats.kept = static_cast<int64_t>(d.val.size());
    for (const Example& e : d.val) {
      d.val_stats.tokens += static_cast<int64_t>(e.ids.size());
      d.val_stats.trained_tokens += targets(e);
    }
    d.train_stats.kept -= d.val_stats.kept;
    d.train_stats.tokens -= d.val_stats.tokens;
    d.train_stats.trained_tokens -= d.val_stats.trained_tokens;
  }
  return d;
}

}  // namespace ftune
