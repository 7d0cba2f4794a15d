// Projects: the list, a board with drag and drop of tasks between columns, task detail, comments.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type DragEvent, type FormEvent } from "react";
import { Link, Route, Routes, useParams } from "react-router";
import { api, type Pagination } from "../api";
import { ErrorNote, Field, Loading, Pager, Section, formValues } from "../ui";

type Column = { id: string; name: string; position: number; is_done: boolean };
type Project = { id: string; name: string; description: string; columns: Column[] };
type Task = {
  id: string;
  project_id: string;
  title: string;
  description: string;
  column_id: string;
  status: string;
  position: number;
  priority: string;
  due_date: string | null;
};
type Comment = { id: string; author: string | null; body: string; created_at: string };

function ProjectList() {
  const client = useQueryClient();
  const [page, setPage] = useState(1);
  const projects = useQuery({
    queryKey: ["projects", page],
    queryFn: () =>
      api<{ projects: Project[]; pagination: Pagination }>("/api/projects", { query: { page, limit: 25, sort: "-created_at" } }),
    placeholderData: keepPreviousData,
  });
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api<Project>("/api/projects", { method: "POST", body }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["projects"] }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    create.mutate({ name: v.name, description: v.description });
    event.currentTarget.reset();
  };
  return (
    <Section title="Projects">
      <form className="row" onSubmit={submit} aria-label="New project">
        <Field label="Project name" name="name" required error={create.error} />
        <Field label="Description" name="description" error={create.error} />
        <button type="submit">Create project</button>
      </form>
      <ErrorNote error={create.error ?? projects.error} />
      {projects.isPending ? <Loading /> : null}
      <ul>
        {projects.data?.projects.map((p) => (
          <li key={p.id}>
            <Link to={`/projects/${p.id}`}>{p.name}</Link> <span className="muted">{p.description}</span>
          </li>
        ))}
      </ul>
      <Pager pagination={projects.data?.pagination} onPage={setPage} />
    </Section>
  );
}

function TaskDetail({ project, task, onClose }: { project: Project; task: Task; onClose: () => void }) {
  const client = useQueryClient();
  const base = `/api/projects/${project.id}/tasks/${task.id}`;
  const comments = useQuery({
    queryKey: ["comments", task.id],
    queryFn: () => api<{ comments: Comment[]; pagination: Pagination }>(`${base}/comments`, { query: { limit: 100 } }),
  });
  const save = useMutation({
    mutationFn: (body: Record<string, unknown>) => api(base, { method: "PATCH", body }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["tasks", project.id] }),
  });
  const comment = useMutation({
    mutationFn: (body: string) => api(`${base}/comments`, { method: "POST", body: { body } }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["comments", task.id] }),
  });
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    const v = formValues(event.currentTarget);
    save.mutate({ title: v.title, description: v.description, priority: v.priority, due_date: v.due_date || null });
  };
  const addComment = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    comment.mutate(formValues(event.currentTarget).body);
    event.currentTarget.reset();
  };
  return (
    <aside className="card detail" aria-labelledby="task-title">
      <header className="card-head">
        <h2 id="task-title">{task.title}</h2>
        <button type="button" className="ghost" onClick={onClose}>
          Close task
        </button>
      </header>
      <form key={task.id} onSubmit={submit} aria-label="Edit task">
        <Field label="Title" name="title" defaultValue={task.title} required error={save.error} />
        <Field label="Description" name="description" error={save.error}>
          {(p) => <textarea {...p} defaultValue={task.description} rows={3} />}
        </Field>
        <Field label="Priority" name="priority" error={save.error}>
          {(p) => (
            <select {...p} defaultValue={task.priority}>
              {["low", "normal", "high", "urgent"].map((x) => (
                <option key={x}>{x}</option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Due date" name="due_date" type="date" defaultValue={task.due_date ?? ""} error={save.error} />
        <ErrorNote error={save.error} />
        <button type="submit">Save task</button>
      </form>
      <h3>Comments</h3>
      <ul className="plain comments">
        {comments.data?.comments.map((c) => (
          <li key={c.id}>
            <p>{c.body}</p>
            <small className="muted">{new Date(c.created_at).toLocaleString()}</small>
          </li>
        ))}
      </ul>
      <form onSubmit={addComment}>
        <Field label="New comment" name="body" required error={comment.error}>
          {(p) => <textarea {...p} rows={2} required />}
        </Field>
        <ErrorNote error={comment.error} />
        <button type="submit">Add comment</button>
      </form>
    </aside>
  );
}

function Board() {
  const { id = "" } = useParams();
  const client = useQueryClient();
  const project = useQuery({ queryKey: ["project", id], queryFn: () => api<Project>(`/api/projects/${id}`) });
  const tasks = useQuery({
    queryKey: ["tasks", id],
    queryFn: () => api<{ tasks: Task[]; pagination: Pagination }>(`/api/projects/${id}/tasks`, { query: { limit: 100 } }),
  });
  const [open, setOpen] = useState<string | null>(null);
  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) => api(`/api/projects/${id}/tasks`, { method: "POST", body }),
    onSuccess: () => client.invalidateQueries({ queryKey: ["tasks", id] }),
  });
  const move = useMutation({
    mutationFn: ({ task, column, position }: { task: string; column: string; position: number }) =>
      api(`/api/projects/${id}/tasks/${task}/move`, { method: "POST", body: { column_id: column, position } }),
    onSettled: () => client.invalidateQueries({ queryKey: ["tasks", id] }),
  });
  if (project.isPending) return <Loading />;
  if (project.error) return <ErrorNote error={project.error} />;
  const drop = (column: string) => (event: DragEvent) => {
    event.preventDefault();
    const task = event.dataTransfer.getData("text/plain");
    const count = tasks.data?.tasks.filter((t) => t.column_id === column).length ?? 0;
    if (task) move.mutate({ task, column, position: count });
  };
  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault();
    create.mutate({ title: formValues(event.currentTarget).title });
    event.currentTarget.reset();
  };
  const openTask = tasks.data?.tasks.find((t) => t.id === open);
  return (
    <Section title={project.data.name} actions={<Link to="/projects">All projects</Link>}>
      <form className="row" onSubmit={submit} aria-label="New task">
        <Field label="Task title" name="title" required error={create.error} />
        <button type="submit">Add task</button>
      </form>
      <ErrorNote error={create.error ?? move.error} />
      <div className="board">
        {project.data.columns.map((column) => (
          <section
            key={column.id}
            className="column"
            aria-label={`Column ${column.name}`}
            data-column={column.name}
            onDragOver={(e) => e.preventDefault()}
            onDrop={drop(column.id)}
          >
            <h3>{column.name}</h3>
            <ul className="plain">
              {tasks.data?.tasks
                .filter((t) => t.column_id === column.id)
                .map((t) => (
                  <li
                    key={t.id}
                    className="tile"
                    draggable
                    onDragStart={(e) => e.dataTransfer.setData("text/plain", t.id)}
                  >
                    <button type="button" className="link" onClick={() => setOpen(t.id)}>
                      {t.title}
                    </button>
                    <span className="muted">{t.priority}</span>
                    <label className="sr-only" htmlFor={`col-${t.id}`}>
                      Column of {t.title}
                    </label>
                    <select
                      id={`col-${t.id}`}
                      value={t.column_id}
                      onChange={(e) => move.mutate({ task: t.id, column: e.target.value, position: 1_000_000 })}
                    >
                      {project.data.columns.map((c) => (
                        <option key={c.id} value={c.id}>
                          {c.name}
                        </option>
                      ))}
                    </select>
                  </li>
                ))}
            </ul>
          </section>
        ))}
      </div>
      {openTask ? <TaskDetail project={project.data} task={openTask} onClose={() => setOpen(null)} /> : null}
    </Section>
  );
}

export default function Projects() {
  return (
    <>
      <h1>Projects</h1>
      <Routes>
        <Route index element={<ProjectList />} />
        <Route path=":id" element={<Board />} />
      </Routes>
    </>
  );
}
