"""cat_relay: answers ``chat.ask`` commands with a Cheshire Cat, streaming replies to the user."""
