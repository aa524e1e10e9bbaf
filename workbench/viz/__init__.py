"""Pictures: ``figures`` turns numbers into plotly figures (pure, testable without Jupyter);
``widgets`` wires figures to models and sliders for the notebooks."""
