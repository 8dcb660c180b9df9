// ftune's entry point: subcommand dispatch, and the one place that turns errors into a single
// line on stderr and a non-zero exit.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <unistd.h>
#include <exception>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "dist/launcher.h"
#include "core/error.h"
#include "train/stop_signal.h"

namespace {
// On a terminal the progress line may be open: end it before the error.
const char* sep() { return isatty(2) ? "\n" : ""; }
}  // namespace

int main(int argc, char** argv) {
  // `ftune train ... --nproc-per-node N` outside any launcher: this process becomes the launcher of
  // N ranks, each a copy of the command without the option.
  if (argc >= 2 && std::string(argv[1]) == "train" && !std::getenv("RANK")) {
    std::vector<std::string> args{argv[0]};
    int nproc = 0;
    try {
      for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--nproc-per-node" && i + 1 < argc) {
          nproc = std::stoi(argv[++i]);
        } else if (a.starts_with("--nproc-per-node=")) {
          nproc = std::stoi(a.substr(17));
        } else {
          args.push_back(a);
        }
      }
    } catch (const std::exception&) {
      fmt::print(stderr, "ftune: error: --nproc-per-node: expected a number of ranks\n");
      return 2;
    }
    if (nproc > 1) {
      try {
        return ftune::dist::launch_local_ranks(nproc, args, 30.0);
      } catch (const ftune::Error& e) {
        fmt::print(stderr, "ftune: error: {}\n", e.what());
        return 1;
      }
    }
  }
  CLI::App app{"ftune: fine-tune Llama-family models (LoRA) from Hugging Face checkpoints"};
  app.require_subcommand(1);
  ftune::add_train_command(app);
  ftune::add_inspect_command(app);
  ftune::add_init_model_command(app);
  ftune::add_logits_command(app);
  ftune::add_tokenize_command(app);
  ftune::add_data_command(app);
  ftune::add_merge_command(app);
  ftune::add_plot_command(app);
  ftune::add_plan_command(app);
  ftune::add_generate_command(app);
  ftune::add_serve_command(app);
  ftune::add_eval_command(app);
  app.set_version_flag("--version", FTUNE_VERSION_TEXT);
  // CLI11 answers an unknown first word with "A subcommand is required"; name it instead.
  if (argc >= 2 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      known = known || sub->check_name(argv[1]);
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      fmt::print(stderr, "ftune: error: unknown command '{}' (commands: {}; ftune --help)\n", argv[1], names);
      return 1;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ftune::Preempted& e) {
    fmt::print(stderr, "{}ftune: {}\n", sep(), e.what());
    return ftune::kExitPreempted;
  } catch (const ftune::Error& e) {
    fmt::print(stderr, "{}ftune: error: {}\n", sep(), e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "{}ftune: error: out of host memory\n", sep());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}ftune: internal error: {}\n", sep(), e.what());
    return 2;
  }
  return 0;
}
