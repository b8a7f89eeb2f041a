"""The app's Streamlit custom components: static HTML/JS folders served by Streamlit itself (nothing
built with npm, nothing fetched at run time). ``graph_viewer``: the Attribution graph page's viewer."""
