"""The loss chart (train, eval, learning rate) and the GPU history lines of the run monitor."""

from __future__ import annotations

from rich.text import Text
from textual_plotext import PlotextPlot

from tui.widgets.metrics_model import RunMetrics, downsample

SPARK = "▁▂▃▄▅▆▇█"


class LossChart(PlotextPlot):
    """Train loss and eval loss over steps, the learning rate on the right axis. Points are
    downsampled to the chart's width, so 100k steps draw as fast as 100."""

    def show(self, metrics: RunMetrics) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        buckets = max(20, self.size.width)
        drawn = False
        if metrics.train_loss:
            x, y = downsample(metrics.train_loss.steps, metrics.train_loss.values, buckets)
            plt.plot(x, y, label="train loss", marker="braille", color="cyan")
            drawn = True
        if metrics.eval_loss:
            x, y = downsample(metrics.eval_loss.steps, metrics.eval_loss.values, buckets)
            plt.scatter(x, y, label="eval loss", marker="o", color="orange")
            drawn = True
        if metrics.learning_rate:
            x, y = downsample(metrics.learning_rate.steps, metrics.learning_rate.values, buckets)
            plt.plot(x, y, label="lr (right)", marker="·", color="gray", yside="right")
            drawn = True
        if not drawn:
            plt.title("no loss logged yet")
        plt.xlabel("step")
        self.refresh()


def sparkline(values: tuple[float, ...] | list[float], width: int, top: float | None) -> str:
    """The last `width` values as block characters scaled to `top` (or their maximum)."""
    if width <= 0:
        return ""
    tail = list(values)[-width:]
    if not tail:
        return ""
    ceiling = top if top else max(tail) or 1.0
    out = []
    for v in tail:
        level = 0 if ceiling <= 0 else min(len(SPARK) - 1, int(v / ceiling * (len(SPARK) - 1)))
        out.append(SPARK[max(0, level)])
    return "".join(out)


def gpu_history_text(
    index: int,
    name: str,
    util_now: int | None,
    mem_used_gib: float | None,
    mem_total_gib: float | None,
    util_history: tuple[float, ...],
    mem_history: tuple[float, ...],
    width: int,
) -> Text:
    """Two lines for one GPU: utilisation and memory, each with its number and a sparkline."""
    out = Text(no_wrap=True, overflow="ellipsis")
    util_label = f"util {util_now:>3} % " if util_now is not None else "util   - % "
    mem_label = f"mem {mem_used_gib:5.1f} GiB " if mem_used_gib is not None else "mem     - GiB "
    spark_w = max(4, width - max(len(util_label), len(mem_label)) - 7)
    out.append(f"GPU {index} ", "bold")
    out.append(util_label.ljust(len(mem_label)))
    out.append(sparkline(util_history, spark_w, 100.0), "green")
    out.append("\n      ")
    out.append(mem_label.ljust(len(util_label)))
    out.append(sparkline(mem_history, spark_w, mem_total_gib), "magenta")
    _ = name
    return out
