"""``python -m edgeasr.tracking``: where this process's stage would go (a debugging aid)."""

import json

from . import invocation, repo_root, tracking_uri

print(json.dumps({"repo_root": str(repo_root()), "tracking_uri": tracking_uri(), "invocation": invocation()[0]},
                 indent=2))
