"""The web console (``finetune console``): pages rendered on the server (``pages``), SVG charts (``charts``),
a small hand-written script and stylesheet (``static/``), served by ``server`` on localhost."""
