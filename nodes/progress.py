"""Per-step values pushed to the browser over ComfyUI's websocket (drawn by web/psld_plot.js)."""
import math

EVENT = "psld.progress"


def report_step(node_id, step: int, total: int, residuals: dict) -> None:
    """Send one step's residuals, tagged with the node id, to every connected page. No server: no-op."""
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:  # in-process use without the HTTP server
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    values = {name: [float(v) for v in tensor.detach().flatten().tolist()] for name, tensor in residuals.items()}
    values = {name: [v if math.isfinite(v) else None for v in vs] for name, vs in values.items()}
    server.send_sync(EVENT, {"node": str(node_id), "step": int(step), "total": int(total), "values": values})
