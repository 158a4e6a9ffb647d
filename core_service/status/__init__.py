"""The public status of the service: availability per model measured from real requests
(`outcomes.py`), the breakers' view of each model's deployments, and the incidents operators
post (`incidents.py`), put together by `report.py`."""
