"""Report templates (jinja2), shipped inside the wheel as tracemortem.templates."""
