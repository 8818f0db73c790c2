// The conversation list: the stored conversations, newest first; pick one, start one, delete one.

export class ConversationList {
  // select(conversation) opens one; remove(id) deletes one.
  constructor({ list, store, select, remove }) {
    Object.assign(this, { list, store, select, remove });
  }

  render(currentId) {
    this.list.replaceChildren(...this.store.conversations().map((conversation) => {
      const item = document.createElement("li");
      item.className = conversation.id === currentId ? "current" : "";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "link";
      open.textContent = conversation.title || "New chat";
      open.addEventListener("click", () => this.select(conversation));
      const drop = document.createElement("button");
      drop.type = "button";
      drop.className = "small";
      drop.textContent = "×";
      drop.title = "Delete this conversation";
      drop.addEventListener("click", () => this.remove(conversation.id));
      item.append(open, drop);
      return item;
    }));
  }
}
