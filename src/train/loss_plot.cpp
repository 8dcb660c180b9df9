// Loss curves with cairo: axes with round tick values, the training loss thin, its moving average
// thick, the validation losses as points joined by a line, a legend.
#include "train/loss_plot.h"

#include <cairo.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/json_limits.h"

namespace ftune {

LossCurves read_loss_curves(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail("{}: cannot be read", path);
  LossCurves c;
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n) {
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = parse_json_bounded(line);
    } catch (const std::exception& e) {
      fail("{}:{}: not a metrics line ({})", path, n, json_reason(e));
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    const int64_t step = j["step"].get<int64_t>();
    if (j.contains("loss") && j["loss"].is_number()) c.train.emplace_back(step, j["loss"].get<double>());
    if (j.contains("val_loss") && j["val_loss"].is_number()) c.val.emplace_back(step, j["val_loss"].get<double>());
  }
  return c;
}

namespace {

// A step of 1, 2 or 5 times a power of ten giving about `n` ticks over [lo, hi].
double nice_step(double lo, double hi, int n) {
  const double raw = std::max((hi - lo) / n, 1e-12);
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * p) return m * p;
  return 10 * p;
}

std::string tick_text(double v, double step) {
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step)));
  return fmt::format("{:.{}f}", v, decimals);
}

}  // namespace

void write_loss_plot(const LossCurves& c, const std::string& png_path, const std::string& title, int width,
                     int height) {
  if (c.train.empty() && c.val.empty()) fail("{}: no losses to plot", png_path);
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* s : {&c.train, &c.val})
    for (const auto& [x, y] : *s) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, static_cast<double>(x)), x1 = std::max(x1, static_cast<double>(x));
      y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const double pad_y = 0.05 * (y1 - y0);
  y0 -= pad_y, y1 += pad_y;
  const double L = 80, R = 24, T = 48, B = 56;  // margins
  const double pw = width - L - R, ph = height - T - B;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return T + (y1 - y) / (y1 - y0) * ph; };

  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, width, height);
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  // Grid, ticks and their labels.
  cairo_set_font_size(cr, 12);
  cairo_set_line_width(cr, 1);
  const double ys = nice_step(y0, y1, 6), xs = nice_step(x0, x1, 8);
  for (double y = std::ceil(y0 / ys) * ys; y <= y1; y += ys) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, L, py(y)), cairo_line_to(cr, L + pw, py(y)), cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    const std::string t = tick_text(y, ys);
    cairo_text_extents_t e;
    cairo_text_extents(cr, t.c_str(), &e);
    cairo_move_to(cr, L - 8 - e.width, py(y) + e.height / 2), cairo_show_text(cr, t.c_str());
  }
  for (double x = std::ceil(x0 / xs) * xs; x <= x1; x += xs) {
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, px(x), T), cairo_line_to(cr, px(x), T + ph), cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    const std::string t = tick_text(x, xs);
    cairo_text_extents_t e;
    cairo_text_extents(cr, t.c_str(), &e);
    cairo_move_to(cr, px(x) - e.width / 2, T + ph + 18), cairo_show_text(cr, t.c_str());
  }
  cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
  cairo_rectangle(cr, L, T, pw, ph), cairo_stroke(cr);
  cairo_move_to(cr, L + pw / 2 - 14, height - 14), cairo_show_text(cr, "step");
  cairo_save(cr);
  cairo_move_to(cr, 20, T + ph / 2 + 14), cairo_rotate(cr, -M_PI / 2), cairo_show_text(cr, "loss");
  cairo_restore(cr);
  cairo_set_font_size(cr, 15);
  cairo_move_to(cr, L, 28), cairo_show_text(cr, title.c_str());

  auto polyline = [&](const std::vector<std::pair<int64_t, double>>& s) {
    bool open = false;
    for (const auto& [x, y] : s) {
      if (!std::isfinite(y)) {
        open = false;
        continue;
      }
      if (open) cairo_line_to(cr, px(static_cast<double>(x)), py(y));
      else cairo_move_to(cr, px(static_cast<double>(x)), py(y)), open = true;
    }
    cairo_stroke(cr);
  };
  cairo_rectangle(cr, L, T, pw, ph);
  cairo_clip(cr);
  // Training loss, and its moving average over a fiftieth of the run (at least 5 steps).
  cairo_set_source_rgba(cr, 0.12, 0.47, 0.71, 0.35);
  cairo_set_line_width(cr, 1);
  polyline(c.train);
  const size_t w = std::max<size_t>(5, c.train.size() / 50);
  std::vector<std::pair<int64_t, double>> avg;
  double sum = 0;
  for (size_t i = 0; i < c.train.size(); ++i) {
    sum += c.train[i].second;
    if (i >= w) sum -= c.train[i - w].second;
    avg.emplace_back(c.train[i].first, sum / static_cast<double>(std::min(i + 1, w)));
  }
  cairo_set_source_rgb(cr, 0.12, 0.47, 0.71);
  cairo_set_line_width(cr, 2.5);
  polyline(avg);
  cairo_set_source_rgb(cr, 0.84, 0.15, 0.16);
  cairo_set_line_width(cr, 2);
  polyline(c.val);
  for (const auto& [x, y] : c.val)
    if (std::isfinite(y)) cairo_arc(cr, px(static_cast<double>(x)), py(y), 3.5, 0, 2 * M_PI), cairo_fill(cr);
  cairo_reset_clip(cr);
  // Legend.
  cairo_set_font_size(cr, 12);
  double lx = L + pw - 230, ly = T + 18;
  auto entry = [&](double r, double g, double b, const char* text) {
    cairo_set_source_rgb(cr, r, g, b);
    cairo_set_line_width(cr, 2.5);
    cairo_move_to(cr, lx, ly - 4), cairo_line_to(cr, lx + 24, ly - 4), cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    cairo_move_to(cr, lx + 30, ly), cairo_show_text(cr, text);
    ly += 18;
  };
  const std::string avg_text = fmt::format("train loss ({}-step average)", w);
  entry(0.12, 0.47, 0.71, avg_text.c_str());
  if (!c.val.empty()) entry(0.84, 0.15, 0.16, "validation loss");

  const std::string tmp = png_path + ".tmp";
  const cairo_status_t st = cairo_surface_write_to_png(surface, tmp.c_str());
  cairo_destroy(cr);
  cairo_surface_destroy(surface);
  if (st != CAIRO_STATUS_SUCCESS) {
    std::remove(tmp.c_str());
    fail("{}: cannot write the plot: {}", png_path, cairo_status_to_string(st));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, png_path, ec);
  if (ec) fail("{}: cannot move into place: {}", png_path, ec.message());
}

}  // namespace ftune
