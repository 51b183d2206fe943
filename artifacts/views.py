"""Downloads of stored artifacts: a run's checkpoint as a zip, for whoever may see the run."""

from __future__ import annotations

from django.http import Http404, StreamingHttpResponse

from arbiter.accounts.decorators import researcher_required
from arbiter.streaming import in_thread
from artifacts import services, uris
from artifacts.archive import zip_stream
from training import selectors as run_selectors
from training.http import AuthedHttpRequest
from training.models import Checkpoint


@researcher_required
def checkpoint_download(request: AuthedHttpRequest, checkpoint_id: int) -> StreamingHttpResponse:
    """The checkpoint folder as `run-<id>-checkpoint-<step>.zip`, streamed from the store (local or bucket)."""
    checkpoint = Checkpoint.objects.filter(id=checkpoint_id).first()
    if checkpoint is None:
        raise Http404("No such checkpoint.")
    run = run_selectors.get_run_for(user=request.user, run_id=checkpoint.run_id)  # 404 for runs one may not see
    try:
        uri = services.checkpoint_uri(run=run, value=checkpoint.path)  # never outside the run's own location
    except (uris.BadUri, services.OutsideRunLocation):
        raise Http404("This checkpoint is not in the artifact store.") from None
    store = services.default_store()
    listing = store.list(uri)
    if not listing:
        raise Http404("This checkpoint's files are gone.")
    name = f"run-{run.id}-checkpoint-{checkpoint.step}"
    stream = zip_stream(store, uri, folder=name, listing=listing)  # listed once: a bucket's LIST is paged and paid
    response = StreamingHttpResponse(in_thread(stream), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{name}.zip"'
    return response
