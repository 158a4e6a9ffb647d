"""The web console (SPEC §11), served by the bridge at `/`: page shells (`pages.py`,
`templates/`) whose scripts (`static/js/`) use only the public HTTP API and the session cookie,
and the assets that ship in the package (`assets.py`, `static/`)."""
